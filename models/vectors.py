"""Test vectors: real inputs with the outputs the model must reproduce, and a tolerance.

Stored as ``test_vectors.npz`` with arrays ``input:<name>``, ``output:<name>`` and the
scalars ``atol`` / ``rtol``. Loaded with ``allow_pickle=False``: a bundle is untrusted
input until verified.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import CorruptBundle, TestVectorMismatch


@dataclass(frozen=True)
class TestVectors:
    __test__ = False  # not a pytest test class despite the name

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    atol: float = 1e-5
    rtol: float = 1e-4

    def save(self, path: Path | str) -> None:
        arrays: dict[str, Any] = {f"input:{k}": v for k, v in self.inputs.items()}
        arrays.update({f"output:{k}": v for k, v in self.outputs.items()})
        arrays["atol"] = np.float64(self.atol)
        arrays["rtol"] = np.float64(self.rtol)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        # np.savez stamps zip entries with the current time; rewrite them with a fixed
        # timestamp so identical vectors give identical bytes (deterministic builds).
        Path(path).write_bytes(_normalise_zip(buf.getvalue()))

    @classmethod
    def load(cls, path: Path | str) -> TestVectors:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CorruptBundle(f"unreadable test vectors {path}: {exc}") from None
        try:
            atol, rtol = float(arrays.pop("atol")), float(arrays.pop("rtol"))
        except KeyError:
            raise CorruptBundle("test vectors lack atol/rtol") from None
        inputs = {k[6:]: v for k, v in arrays.items() if k.startswith("input:")}
        outputs = {k[7:]: v for k, v in arrays.items() if k.startswith("output:")}
        if not inputs or not outputs:
            raise CorruptBundle("test vectors need at least one input and one output")
        return cls(inputs=inputs, outputs=outputs, atol=atol, rtol=rtol)

    def check(self, actual: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`TestVectorMismatch` unless ``actual`` matches (NaN equals NaN)."""
        for name, want in self.outputs.items():
            got = actual.get(name)
            if got is None or got.shape != want.shape:
                shape = None if got is None else got.shape
                raise TestVectorMismatch(f"output {name!r}: shape {shape} != {want.shape}")
            if not np.allclose(got, want, atol=self.atol, rtol=self.rtol, equal_nan=True):
                worst = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
                raise TestVectorMismatch(
                    f"output {name!r} differs from the test vectors (max abs diff {worst:.3g},"
                    f" atol {self.atol}, rtol {self.rtol})"
                )


def _normalise_zip(data: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()
