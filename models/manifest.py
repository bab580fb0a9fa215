"""The model bundle manifest: what a model is, how to feed it, how to read it.

The manifest is the contract between the model builder, the gateway, the edge agent and
the cloud tier. It is a frozen pydantic model; its canonical JSON (sorted keys, no
whitespace, signature excluded) is what the bundle signature covers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL"]

#: KServe V2 datatype name -> numpy dtype.
NUMPY_DTYPES: dict[DType, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_model_name(name: str) -> str:
    """Model names become directory names and topic segments: keep them boring."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: use [a-z0-9._-], at most 64 characters")
    return name


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One input or output tensor. ``shape`` uses -1 for the batch and any dynamic axis."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.dtype]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete ``shape`` fits this spec (same rank, fixed axes equal)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class Normalization(_Frozen):
    """Per-channel z-score applied by the caller before inference (mean/std per channel)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class Preprocessing(_Frozen):
    """How a stream of readings becomes one model input row of shape (window, channels)."""

    window: int = Field(gt=0, description="samples per window")
    hop: int = Field(gt=0, description="samples between the starts of consecutive windows")
    channels: tuple[str, ...] = Field(min_length=1, description="channel order in the input")
    sample_rate_hz: float = Field(gt=0)
    normalization: Normalization | None = Field(
        default=None, description="None when the graph normalises internally"
    )

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """Apply normalisation to a (batch, window, channels) float32 array."""
        if self.normalization is None:
            return windows
        mean = np.asarray(self.normalization.mean, dtype=np.float32)
        std = np.asarray(self.normalization.std, dtype=np.float32)
        return (windows - mean) / std


class Postprocessing(_Frozen):
    """How to read the output: class labels or an anomaly score with a threshold."""

    kind: Literal["classifier", "anomaly"]
    output: str = Field(description="name of the output tensor that holds scores")
    labels: tuple[str, ...] = ()
    threshold: float | None = Field(default=None, description="anomaly score alert threshold")

    @model_validator(mode="after")
    def _check_kind(self) -> Postprocessing:
        if self.kind == "classifier" and not self.labels:
            raise ValueError("a classifier needs labels")
        if self.kind == "anomaly" and self.threshold is None:
            raise ValueError("an anomaly model needs a threshold")
        return self


class LatencyMeasurement(_Frozen):
    """Per-batch latency measured at build time on the build machine."""

    batch_size: int
    p50_ms: float
    p99_ms: float
    backend: str


class Metrics(_Frozen):
    """Quality and speed measured when the bundle was built."""

    accuracy: float | None = None
    auc: float | None = None
    test_samples: int = 0
    latency: tuple[LatencyMeasurement, ...] = ()
    machine: str = ""


class Manifest(_Frozen):
    """``manifest.json`` of a model bundle."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    description: str = ""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    slo_ms: float = Field(default=100.0, gt=0, description="default latency SLO")
    max_batch_size: int = Field(default=256, ge=1)
    metrics: Metrics = Metrics()
    files: dict[str, str] = Field(
        default_factory=dict, description="relative path -> sha256 hex of every bundle file"
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_model_name(v)

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for path, digest in v.items():
            if path.startswith("/") or ".." in path.split("/") or "\\" in path:
                raise ValueError(f"unsafe file path in manifest: {path!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"bad sha256 for {path!r}")
        return v

    @model_validator(mode="after")
    def _check_output(self) -> Manifest:
        names = {o.name for o in self.outputs}
        if self.postprocessing.output not in names:
            raise ValueError(f"postprocessing.output {self.postprocessing.output!r} not an output")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def canonical_json(self) -> bytes:
        """The bytes a signature covers: sorted keys, compact separators, UTC timestamps."""
        import json

        data = self.model_dump(mode="json")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
