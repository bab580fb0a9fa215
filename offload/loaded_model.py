"""One served model version: its backend, batcher, metrics and pre-built descriptions."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor

import numpy as np

from models.backends import Backend
from models.errors import InvalidInput
from offload.batcher import Arrays, BatchConfig, DynamicBatcher
from offload.codec import datatype_of
from offload.metrics import ModelMetrics
from offload.model_config import ServingConfig, model_config_proto

_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


class LoadedModel:
    """One ready model version: backend, batcher, metrics and its pre-built descriptions."""

    def __init__(
        self,
        name: str,
        version: int,
        backend: Backend,
        config: ServingConfig,
        executor: Executor,
        metrics: ModelMetrics,
        instances: int,
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self.output_names = tuple(spec.name for spec in self.outputs)
        self._checks = tuple((s.name, s.numpy_dtype, s.dtype, s.shape) for s in self.inputs)
        self.platform = _PLATFORMS.get(backend.kind, backend.kind)
        self.config_proto = model_config_proto(
            name, self.platform, backend.kind, self.inputs, self.outputs, config
        )
        self.batcher = DynamicBatcher(
            backend.infer,
            BatchConfig(
                max_batch_size=config.max_batch_size,
                max_queue_delay_s=config.max_queue_delay_us / 1e6,
                preferred_sizes=config.preferred_sizes,
                max_queue=config.max_queue,
                instances=instances,
            ),
            executor,
            label=f"{name}:{version}",
            observer=metrics,
        )

    def check(self, arrays: Mapping[str, np.ndarray]) -> int:
        """Validate inputs against the graph; returns the batch's row count."""
        if len(arrays) != len(self._checks):
            names = [c[0] for c in self._checks]
            missing = [n for n in names if n not in arrays]
            extra = [n for n in arrays if n not in names]
            if missing:
                raise InvalidInput(
                    f"missing input {missing[0]!r} for {self.name}:{self.version}; it takes {names}"
                )
            raise InvalidInput(f"unknown input {extra[0]!r}; {self.name} takes {names}")
        rows = -1
        for name, dtype, dtype_name, shape in self._checks:
            arr = arrays.get(name)
            if arr is None:
                raise InvalidInput(
                    f"missing input {name!r} for {self.name}:{self.version}; "
                    f"it takes {[c[0] for c in self._checks]}"
                )
            if arr.dtype != dtype:
                raise InvalidInput(
                    f"input {name!r} has datatype {_kserve(arr)}, "
                    f"{self.name}:{self.version} expects {dtype_name}"
                )
            got = arr.shape
            if len(got) != len(shape) or any(w != -1 and w != g for w, g in zip(shape, got)):  # noqa: B905
                raise InvalidInput(
                    f"input {name!r} has shape {list(got)}, {self.name}:{self.version} expects "
                    f"{list(shape)} (-1 = any)"
                )
            if self.config.max_batch_size:
                if rows >= 0 and got[0] != rows:
                    raise InvalidInput("inputs disagree on the batch size (first dimension)")
                rows = got[0]
        return max(rows, 1)

    async def infer(self, arrays: Arrays, deadline: float | None) -> Arrays:
        rows = self.check(arrays)
        return await self.batcher.submit(arrays, rows, deadline)


def _kserve(arr: np.ndarray) -> str:
    try:
        return datatype_of(arr)
    except InvalidInput:
        return str(arr.dtype)
