"""Where sensor values come from: BasicMotions replay or synthetic vibration with faults.

Rows are pre-formatted JSON arrays (``b"[0.1234,...]"``) in per-source tables so the
publish path is a table lookup plus one ``%`` format; the simulators spend their CPU on
the wire, not on number formatting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models import basicmotions, vibration


class PayloadSource(Protocol):
    """Values of reading ``seq`` of sensor ``index`` as a JSON array (bytes)."""

    channels: tuple[str, ...]

    def row(self, index: int, seq: int) -> bytes: ...


def _format_rows(x: np.ndarray) -> list[bytes]:
    return [b"[" + b",".join(b"%.4f" % v for v in row) + b"]" for row in x.tolist()]


class BasicMotionsReplay:
    """Replays the real BasicMotions series back to back; sensor ``k`` starts at series ``k``.

    Consecutive series of one sensor are different recordings, so a window that spans two
    of them is a (realistic) activity change.
    """

    channels = basicmotions.CHANNELS

    def __init__(self, split: basicmotions.Split = "test") -> None:
        x, self.labels = basicmotions.load(split)
        self._series, self._len = x.shape[0], x.shape[1]
        self._rows = _format_rows(x.reshape(-1, x.shape[2]))
        self._period = len(self._rows)

    def row(self, index: int, seq: int) -> bytes:
        return self._rows[(index * self._len + seq) % self._period]


@dataclass(frozen=True)
class FaultWindow:
    """Sensors ``index % every == 0`` show ``fault`` from ``start_s`` for ``length_s``."""

    fault: str
    start_s: float
    length_s: float
    every: int = 10
    severity: float = 1.0


class VibrationSource:
    """Synthetic vibration (``models.vibration``) from a few machines, with scheduled faults.

    ``machines`` distinct shafts are rendered once for ``cycle`` samples, healthy and
    with each scheduled fault; sensor ``k`` reads machine ``k % machines`` at its own
    offset. ``clock()`` must return seconds since the run started (set by the fleet).
    """

    channels = vibration.CHANNELS

    def __init__(
        self,
        faults: tuple[FaultWindow, ...] = (),
        *,
        machines: int = 8,
        cycle: int = 4096,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        fleet = [vibration.Machine.random(rng) for _ in range(machines)]
        t = np.arange(cycle) / vibration.SAMPLE_RATE_HZ
        self._healthy = [_format_rows(m.signal(t, rng)) for m in fleet]
        self._faulty: dict[tuple[str, float], list[list[bytes]]] = {}
        for fw in faults:
            key = (fw.fault, fw.severity)
            if key not in self._faulty:
                self._faulty[key] = [
                    _format_rows(m.signal(t, rng, fw.fault, fw.severity)) for m in fleet
                ]
        self.faults = faults
        self._machines, self._cycle = machines, cycle
        self.elapsed_s = 0.0

    def faulty(self, index: int, t: float) -> FaultWindow | None:
        for fw in self.faults:
            if index % fw.every == 0 and fw.start_s <= t < fw.start_s + fw.length_s:
                return fw
        return None

    def row(self, index: int, seq: int) -> bytes:
        table = self._healthy
        if self.faults:
            fw = self.faulty(index, self.elapsed_s)
            if fw is not None:
                table = self._faulty[(fw.fault, fw.severity)]
        return table[index % self._machines][(index * 997 + seq) % self._cycle]


def make_source(kind: str, faults: tuple[FaultWindow, ...] = (), seed: int = 0) -> PayloadSource:
    """``basicmotions`` (6 channels, for motion-*) or ``vibration`` (3, vibration-anomaly)."""
    if kind == "basicmotions":
        return BasicMotionsReplay()
    if kind == "vibration":
        return VibrationSource(faults, seed=seed)
    raise ValueError(f"unknown payload source {kind!r}: use basicmotions or vibration")
