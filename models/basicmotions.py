"""The real BasicMotions smartwatch dataset shipped as package data.

Four activities (Standing, Running, Walking, Badminton), 6 channels (3-axis accelerometer,
3-axis gyroscope), 100 samples at 10 Hz per series; 40 series each in TRAIN and TEST.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np

from models.errors import NotFound

LABELS: tuple[str, ...] = ("Standing", "Running", "Walking", "Badminton")
CHANNELS: tuple[str, ...] = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
WINDOW = 100
HOP = 10
SAMPLE_RATE_HZ = 10.0

Split = Literal["train", "test"]


def _parse(text: str) -> tuple[np.ndarray, list[str]]:
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        rows = [np.array(c.split(","), dtype=np.float32) for c in channels]
        series.append(np.stack(rows, axis=1))  # (samples, channels)
        labels.append(label.strip())
    return np.stack(series), labels


@lru_cache(maxsize=2)
def _load_cached(split: Split) -> tuple[np.ndarray, tuple[str, ...]]:
    name = f"BasicMotions_{split.upper()}.ts"
    try:
        text = resources.files("models").joinpath("data", "basicmotions", name).read_text()
    except FileNotFoundError:
        raise NotFound(f"BasicMotions data file {name} is missing from the package") from None
    x, labels = _parse(text)
    x.setflags(write=False)
    return x, tuple(labels)


def load(split: Split) -> tuple[np.ndarray, list[str]]:
    """``(X, labels)``: X float32 of shape (n, 100, 6) in :data:`CHANNELS` order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    x, labels = _load_cached(split)
    return x.copy(), list(labels)


def label_indices(labels: list[str]) -> np.ndarray:
    """Labels -> int64 class indices in :data:`LABELS` order."""
    return np.array([LABELS.index(lbl) for lbl in labels], dtype=np.int64)


def stream(split: Split, index: int) -> np.ndarray:
    """One series as a reading stream: float32 (100, 6), one 6-channel reading per row."""
    x, _ = _load_cached(split)
    return x[index].copy()
