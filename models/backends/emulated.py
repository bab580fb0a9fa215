"""A backend wrapper that emulates a slower edge device, for fleet simulation.

Why: on one test machine every virtual node shares the same fast CPU, so a load burst
never exceeds "local capacity" and the offload path is never exercised honestly. Burning
CPU to slow a node down would also slow the broker and the cloud tier sharing the
machine. Instead the wrapper holds the inference worker for the extra time a slower
device would need (``per_batch_ms + per_item_ms * batch``), which caps the node's
throughput like real hardware does while leaving the CPU to everyone else.
Real outputs still come from the wrapped backend. Never enable it in production.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from models.backends.base import Backend
from models.manifest import TensorSpec


class EmulatedDevice(Backend):
    """``inner`` plus a fixed extra service time per batch and per item."""

    kind = "emulated"

    def __init__(self, inner: Backend, *, per_batch_ms: float, per_item_ms: float) -> None:
        if per_batch_ms < 0 or per_item_ms < 0:
            raise ValueError("emulated device times must be >= 0")
        self.inner = inner
        self.per_batch_s = per_batch_ms / 1000.0
        self.per_item_s = per_item_ms / 1000.0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    @property
    def description(self) -> str:
        return (
            f"{self.inner.description} + emulated device "
            f"({self.per_batch_s * 1e3:g} ms/batch, {self.per_item_s * 1e3:g} ms/item)"
        )

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner.infer(inputs)
        batch = next(iter(inputs.values())).shape[0] if inputs else 0
        remaining = self.per_batch_s + self.per_item_s * batch - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        return out

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        self.inner.warmup(batch_sizes)  # warm-up need not pay the emulated time

    def close(self) -> None:
        self.inner.close()
