"""The backend interface every inference engine implements.

A backend owns one loaded model. ``infer`` is synchronous and thread-safe: callers on an
event loop run it in a sized executor, never on the loop itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from models.manifest import TensorSpec


@dataclass(frozen=True)
class BackendOptions:
    """Engine knobs shared by all backends (each ignores what it cannot use)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    fp16: bool = False
    cache_dir: Path | None = None
    device_id: int = 0
    providers: Sequence[str] = field(default_factory=tuple)
    #: Simulation only: emulate a slower device (see models.backends.emulated).
    emulate_ms_per_batch: float = 0.0
    emulate_ms_per_item: float = 0.0


class Backend(ABC):
    """One loaded model on one engine."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    @abstractmethod
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def description(self) -> str:
        """Human-readable engine detail (providers, precision) for logs and status."""
        return self.kind

    @abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every output's first axis equals the inputs' batch size."""

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run zero-filled batches so first real requests do not pay lazy initialisation."""
        for n in batch_sizes:
            self.infer(zero_feed(self.inputs, n))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources; the backend is unusable afterwards."""


def zero_feed(inputs: Sequence[TensorSpec], batch: int = 1) -> dict[str, np.ndarray]:
    """Zeros for every input: a dynamic first (batch) axis of ``batch`` rows, a fixed first
    axis kept as it is (a graph that cannot batch), every other dynamic axis 1."""

    def dim(i: int, d: int) -> int:
        if i == 0:
            return batch if d < 0 else d
        return d if d > 0 else 1

    return {
        spec.name: np.zeros(tuple(dim(i, d) for i, d in enumerate(spec.shape)), spec.numpy_dtype)
        for spec in inputs
    }
