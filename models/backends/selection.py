"""Which backend to use: detect the machine's capabilities, then decide with a pure function.

Detection touches the system (importlib metadata, ``nvidia-smi``, Jetson release files);
:func:`choose_backend` only looks at a :class:`Capabilities` value, so every branch is
unit-tested without a GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from models.backends.onnxruntime import CPU_EP, CUDA_EP
from models.errors import ConfigError

KINDS: tuple[str, ...] = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run, as far as detection could tell."""

    tensorrt_version: str | None = None
    cuda_python: bool = False
    gpu_name: str | None = None
    ort_providers: tuple[str, ...] = (CPU_EP,)


@dataclass(frozen=True)
class Selection:
    """A backend choice and the human-readable reason it was made."""

    kind: str
    providers: tuple[str, ...]
    reason: str


def choose_backend(requested: str, caps: Capabilities) -> Selection:
    """Pick a backend: TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU.

    An explicit ``requested`` kind is honoured as is (loading it reports what is missing);
    ``auto`` falls through the preference order and says why each step was skipped.
    """
    if requested not in KINDS:
        raise ConfigError(f"unknown backend kind {requested!r}; choose one of {KINDS}")
    if requested == "tensorrt":
        return Selection("tensorrt", (), "tensorrt requested explicitly")
    if requested == "onnxruntime":
        return Selection("onnxruntime", (), "onnxruntime requested explicitly")
    skipped: list[str] = []
    if caps.gpu_name is None:
        skipped.append("no NVIDIA GPU detected")
    elif caps.tensorrt_version is None:
        skipped.append("tensorrt python package not installed")
    elif not caps.cuda_python:
        skipped.append("cuda-python not installed (needed for TensorRT buffers)")
    else:
        return Selection(
            "tensorrt",
            (),
            f"TensorRT {caps.tensorrt_version} with GPU {caps.gpu_name}",
        )
    if caps.gpu_name is not None and CUDA_EP in caps.ort_providers:
        why = "; ".join(skipped)
        return Selection(
            "onnxruntime",
            (CUDA_EP, CPU_EP),
            f"onnxruntime CUDA on GPU {caps.gpu_name} (TensorRT skipped: {why})",
        )
    if caps.gpu_name is not None:
        skipped.append("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return Selection("onnxruntime", (CPU_EP,), f"onnxruntime CPU ({'; '.join(skipped)})")


def _gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return out.splitlines()[0].strip()
    # Jetson boards have no nvidia-smi; the device-tree model names the module.
    tegra = Path("/etc/nv_tegra_release")
    model = Path("/proc/device-tree/model")
    if tegra.exists():
        try:
            return model.read_text(errors="replace").strip("\x00\n ") or "NVIDIA Jetson"
        except OSError:
            return "NVIDIA Jetson"
    return None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def detect_capabilities() -> Capabilities:
    """Probe the machine without importing heavy GPU libraries."""
    import onnxruntime as ort

    trt_version = None
    if importlib.util.find_spec("tensorrt") is not None:
        trt_version = _dist_version("tensorrt") or _dist_version("tensorrt-cu12") or "unknown"
    return Capabilities(
        tensorrt_version=trt_version,
        cuda_python=importlib.util.find_spec("cuda") is not None,
        gpu_name=_gpu_name(),
        ort_providers=tuple(ort.get_available_providers()),
    )
