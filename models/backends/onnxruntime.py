"""ONNX Runtime backend: CPU always, CUDA and TensorRT execution providers when present.

The GPU execution providers (CUDA, TensorRT) are configured here but have not been run on
GPU hardware in this project's CI; only the CPU path is verified by tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from models.backends.base import Backend, BackendOptions
from models.errors import BackendError, InvalidInput
from models.manifest import DType, TensorSpec

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: Providers we know how to configure, in order of preference.
KNOWN_PROVIDERS: tuple[str, ...] = (TRT_EP, CUDA_EP, CPU_EP)

#: ONNX Runtime type strings -> our KServe-style dtype names.
ORT_DTYPES: dict[str, DType] = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


def ort_dtype(type_str: str) -> DType:
    """Map an ONNX Runtime type string (``tensor(float)``) to our dtype name (``FP32``)."""
    try:
        return ORT_DTYPES[type_str]
    except KeyError:
        raise BackendError(f"unsupported tensor type {type_str!r}") from None


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    # ORT reports symbolic or unknown dims as strings or None; the manifest uses -1.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def select_providers(
    available: Sequence[str], options: BackendOptions
) -> list[tuple[str, dict[str, str]]]:
    """Execution providers (with their options) to request, best first, always ending in CPU.

    Pure: ``available`` is what ``onnxruntime.get_available_providers()`` reports. An
    explicit ``options.providers`` list restricts the choice; requested-but-missing
    providers are dropped with a warning rather than failing the load.
    """
    wanted = list(options.providers) if options.providers else list(KNOWN_PROVIDERS)
    chosen: list[tuple[str, dict[str, str]]] = []
    for name in wanted:
        if name not in available:
            if options.providers:
                log.warning("execution provider %s requested but not available", name)
            continue
        if name == TRT_EP:
            trt_opts = {"device_id": str(options.device_id), "trt_fp16_enable": str(options.fp16)}
            if options.cache_dir is not None:
                trt_opts["trt_engine_cache_enable"] = "True"
                trt_opts["trt_engine_cache_path"] = str(options.cache_dir)
                trt_opts["trt_timing_cache_enable"] = "True"
                trt_opts["trt_timing_cache_path"] = str(options.cache_dir)
            chosen.append((name, trt_opts))
        elif name == CUDA_EP:
            chosen.append((name, {"device_id": str(options.device_id)}))
        elif name == CPU_EP:
            chosen.append((name, {}))
        else:
            chosen.append((name, {}))
    if not any(name == CPU_EP for name, _ in chosen):
        chosen.append((CPU_EP, {}))
    return chosen


class OrtBackend(Backend):
    """One ONNX model in one ``onnxruntime.InferenceSession`` (``run`` is thread-safe)."""

    kind: ClassVar[str] = "onnxruntime"

    def __init__(self, model_path: Path | str, options: BackendOptions | None = None) -> None:
        self.model_path = Path(model_path)
        self.options = options or BackendOptions()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = select_providers(ort.get_available_providers(), self.options)
        try:
            session = ort.InferenceSession(
                str(self.model_path),
                sess_options=so,
                providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers],
            )
        except Exception as exc:  # ORT raises its own untyped errors: map them once here
            raise BackendError(f"cannot load {self.model_path}: {exc}") from exc
        self._inputs = tuple(
            TensorSpec(name=i.name, dtype=ort_dtype(i.type), shape=_dims(i.shape))
            for i in session.get_inputs()
        )
        self._outputs = tuple(
            TensorSpec(name=o.name, dtype=ort_dtype(o.type), shape=_dims(o.shape))
            for o in session.get_outputs()
        )
        # What _feeds checks, resolved once: it runs for every batch, and the specs'
        # pydantic attributes and dtype lookups cost more than the checks themselves.
        self._input_names = frozenset(spec.name for spec in self._inputs)
        self._input_checks = tuple(
            (spec.name, spec.shape, spec.numpy_dtype, spec) for spec in self._inputs
        )
        self._providers = list(session.get_providers())
        self._session: ort.InferenceSession | None = session
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, best first."""
        return list(self._providers)

    @property
    def description(self) -> str:
        threads = f"intra={self.options.intra_op_threads},inter={self.options.inter_op_threads}"
        return f"onnxruntime {ort.__version__} [{','.join(self.providers)}] {threads}"

    def _feeds(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._input_names
        if not names.issuperset(inputs):
            extra = set(inputs) - names
            raise InvalidInput(f"unknown inputs {sorted(extra)}; model takes {sorted(names)}")
        feeds: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name, want, dtype, spec in self._input_checks:
            if name not in inputs:
                raise InvalidInput(f"missing input {name!r}")
            arr = np.asarray(inputs[name])
            shape = arr.shape
            if len(shape) != len(want) or any(
                w != -1 and w != g
                for w, g in zip(want, shape)  # noqa: B905 - same length, checked above
            ):
                raise InvalidInput(f"input {name!r} has shape {tuple(shape)}, expected {want}")
            if arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise InvalidInput(
                        f"input {name!r} has dtype {arr.dtype}, expected {spec.dtype}"
                    )
                arr = arr.astype(dtype)
            if batch is not None and shape[0] != batch:
                raise InvalidInput("inputs disagree on the batch size")
            batch = shape[0] if arr.ndim else None
            feeds[name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        return feeds

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise BackendError("backend is closed")
        feeds = self._feeds(inputs)
        try:
            results = session.run(self._output_names, feeds)
        except Exception as exc:
            raise BackendError(f"inference failed: {exc}") from exc
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        # Dropping the session frees its arenas; in-flight runs keep their own reference.
        self._session = None
