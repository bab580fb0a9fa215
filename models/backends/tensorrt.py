"""Native TensorRT backend: an engine built from the ONNX file, cached on disk.

UNVERIFIED ON HARDWARE: no GPU exists in this project's CI. The cache key
(:func:`engine_cache_key`) and the lazy import with its install hint are unit-tested; the
build/run path follows the TensorRT 10 Python API (explicit batch, named I/O tensors,
``execute_async_v3``) and uses ``cuda-python`` for device buffers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.backends.base import Backend, BackendOptions
from models.errors import BackendError, InvalidInput, MissingDependency
from models.manifest import DType, TensorSpec

log = logging.getLogger(__name__)

#: Engines are built with a dynamic-batch profile from 1 to this many rows.
DEFAULT_MAX_BATCH = 256


def engine_cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, *, fp16: bool, max_batch: int
) -> str:
    """File name of a cached engine: an engine only runs on the TensorRT version and GPU
    model that built it, so both are part of the key, as are the precision and profile."""
    raw = "|".join([onnx_sha256, trt_version, gpu_name, f"fp16={fp16}", f"max={max_batch}"])
    return hashlib.sha256(raw.encode()).hexdigest()[:32] + ".engine"


def default_cache_dir() -> Path:
    """Engines are derived data: keep them out of the (hash-verified) repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecloud" / "tensorrt"


def _import_trt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependency("tensorrt", "tensorrt") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise MissingDependency("cuda-python", "tensorrt") from None
    return trt, cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def _gpu_name(cudart: Any, device: int) -> str:
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


class TrtBackend(Backend):
    """One TensorRT engine with one execution context guarded by a lock."""

    kind: ClassVar[str] = "tensorrt"

    def __init__(
        self,
        model_path: Path | str,
        options: BackendOptions | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._trt, self._cudart = _import_trt()
        self.model_path = Path(model_path)
        self.options = options or BackendOptions()
        self.max_batch = max_batch
        trt, cudart = self._trt, self._cudart
        _check(cudart.cudaSetDevice(self.options.device_id))
        self._logger = trt.Logger(trt.Logger.WARNING)
        onnx_bytes = self.model_path.read_bytes()
        self.gpu = _gpu_name(cudart, self.options.device_id)
        key = engine_cache_key(
            hashlib.sha256(onnx_bytes).hexdigest(),
            trt.__version__,
            self.gpu,
            fp16=self.options.fp16,
            max_batch=max_batch,
        )
        cache_dir = self.options.cache_dir or default_cache_dir()
        cache_file = cache_dir / key
        plan = cache_file.read_bytes() if cache_file.exists() else None
        if plan is None:
            plan = self._build(onnx_bytes)
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(plan)
            os.replace(tmp, cache_file)
            log.info("built TensorRT engine %s for %s on %s", key, self.model_path, self.gpu)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(f"cannot deserialize TensorRT engine {cache_file}")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._lock = threading.Lock()
        ins: list[TensorSpec] = []
        outs: list[TensorSpec] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            spec = TensorSpec(
                name=name,
                dtype=_np_to_name(dtype),
                shape=tuple(int(d) for d in self._engine.get_tensor_shape(name)),
            )
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (ins if is_input else outs).append(spec)
        self._inputs, self._outputs = tuple(ins), tuple(outs)
        self._buffers: dict[str, int] = {}
        for spec in (*ins, *outs):
            row = int(np.prod(spec.shape[1:], dtype=np.int64))
            nbytes = max_batch * row * spec.numpy_dtype.itemsize
            self._buffers[spec.name] = _check(cudart.cudaMalloc(nbytes))
            self._context.set_tensor_address(spec.name, self._buffers[spec.name])

    def _build(self, onnx_bytes: bytes) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {self.model_path}: {errors}")
        config = builder.create_builder_config()
        if self.options.fp16 and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = [d if d > 0 else 1 for d in tuple(tensor.shape)[1:]]
            opt = min(64, self.max_batch)
            profile.set_shape(tensor.name, [1, *rest], [opt, *rest], [self.max_batch, *rest])
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT failed to build an engine for {self.model_path}")
        return bytes(plan)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def description(self) -> str:
        precision = "fp16" if self.options.fp16 else "fp32"
        return f"tensorrt {self._trt.__version__} on {self.gpu} ({precision})"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            for spec in self._inputs:
                if spec.name not in inputs:
                    raise InvalidInput(f"missing input {spec.name!r}")
                arr = np.ascontiguousarray(inputs[spec.name], dtype=spec.numpy_dtype)
                if not spec.accepts(arr.shape) or not 1 <= arr.shape[0] <= self.max_batch:
                    raise InvalidInput(f"input {spec.name!r} shape {arr.shape} vs {spec.shape}")
                self._context.set_input_shape(spec.name, arr.shape)
                _check(
                    cudart.cudaMemcpyAsync(
                        self._buffers[spec.name], arr.ctypes.data, arr.nbytes, h2d, self._stream
                    )
                )
            if not self._context.execute_async_v3(int(self._stream)):
                raise BackendError("TensorRT execution failed")
            results: dict[str, np.ndarray] = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
                out = np.empty(shape, dtype=spec.numpy_dtype)
                _check(
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data, self._buffers[spec.name], out.nbytes, d2h, self._stream
                    )
                )
                results[spec.name] = out
            _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def close(self) -> None:
        with self._lock:
            for ptr in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)


def _np_to_name(dtype: np.dtype) -> DType:
    from models.manifest import NUMPY_DTYPES

    for name, dt in NUMPY_DTYPES.items():
        if dt == dtype:
            return name
    raise BackendError(f"unsupported TensorRT tensor dtype {dtype}")
