"""Turn a trained recipe into a signed bundle, and build the whole built-in set.

Determinism: the same name/version/seed/variant give byte-identical ``model.onnx`` and
``test_vectors.npz`` (and so the same ``manifest.files``). The manifest itself also holds
the build time and measured latency, which naturally differ between builds.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models import basicmotions, signing, vibration
from models.backends.base import BackendOptions
from models.backends.onnxruntime import OrtBackend
from models.bundle import MANIFEST, MODEL, VECTORS, bundle_filename, pack_bundle
from models.manifest import (
    LatencyMeasurement,
    Manifest,
    Metrics,
    Postprocessing,
    Preprocessing,
    TensorSpec,
)
from models.recipes import anomaly, motion
from models.recipes.motion import Trained
from models.repository import ModelRepository
from models.vectors import TestVectors

VARIANTS: tuple[str, ...] = ("normal", "nan", "slow")
RECIPES: dict[str, Callable[..., Trained]] = {
    "motion-edge": motion.build,
    "motion-cloud": motion.build,
    "vibration-anomaly": anomaly.build,
}
SLO_MS = {"motion-edge": 50.0, "motion-cloud": 100.0, "vibration-anomaly": 100.0}


@dataclass
class BuildResult:
    """What :func:`build_all` produced (paths are inside ``out_dir``)."""

    out_dir: Path
    repository: Path
    key: Path
    public_key: Path
    bundles: dict[str, Path] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    seconds: float = 0.0


def measure_latency(
    model_path: Path, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 64)
) -> tuple[LatencyMeasurement, ...]:
    """p50/p99 per-batch latency on ONNX Runtime CPU with one intra-op thread."""
    backend = OrtBackend(model_path, BackendOptions(intra_op_threads=1, inter_op_threads=1))
    rng = np.random.default_rng(0)
    results = []
    try:
        for batch in batch_sizes:
            x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
            feeds = {backend.inputs[0].name: x}
            for _ in range(5):
                backend.infer(feeds)
            runs = 200 if batch == 1 else 40
            times = np.empty(runs)
            for i in range(runs):
                start = time.perf_counter()
                backend.infer(feeds)
                times[i] = time.perf_counter() - start
            results.append(
                LatencyMeasurement(
                    batch_size=batch,
                    p50_ms=round(float(np.percentile(times, 50)) * 1e3, 4),
                    p99_ms=round(float(np.percentile(times, 99)) * 1e3, 4),
                    backend="onnxruntime-cpu-1thread",
                )
            )
    finally:
        backend.close()
    return tuple(results)


def _preprocessing(name: str) -> Preprocessing:
    if name.startswith("motion"):
        return Preprocessing(
            window=basicmotions.WINDOW,
            hop=basicmotions.HOP,
            channels=basicmotions.CHANNELS,
            sample_rate_hz=basicmotions.SAMPLE_RATE_HZ,
        )
    return Preprocessing(
        window=vibration.WINDOW,
        hop=vibration.HOP,
        channels=vibration.CHANNELS,
        sample_rate_hz=vibration.SAMPLE_RATE_HZ,
    )


def build_model(
    name: str,
    version: int,
    out_dir: Path | str,
    key: Ed25519PrivateKey | Path | str,
    variant: str = "normal",
    seed: int | None = None,
    *,
    created_at: datetime | None = None,
) -> Path:
    """Train, measure, sign and pack one model; returns ``<out_dir>/<name>-<version>.bundle``.

    ``seed`` defaults to ``version``, so each version's outputs differ slightly.
    """
    path, _ = build_bundle(name, version, out_dir, key, variant, seed, created_at=created_at)
    return path


def build_bundle(
    name: str,
    version: int,
    out_dir: Path | str,
    key: Ed25519PrivateKey | Path | str,
    variant: str = "normal",
    seed: int | None = None,
    *,
    created_at: datetime | None = None,
) -> tuple[Path, Manifest]:
    """:func:`build_model`, also returning the signed manifest."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; built-ins are {sorted(RECIPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    private = key if isinstance(key, Ed25519PrivateKey) else signing.load_private_key(key)
    trained = RECIPES[name](name, seed=version if seed is None else seed, variant=variant)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=f"edgecloud-build-{name}-") as tmp:
        src = Path(tmp)
        onnx.save(trained.model, src / MODEL)
        backend = OrtBackend(src / MODEL)
        expected = backend.infer({"input": trained.vector_inputs})
        inputs, outputs = backend.inputs, backend.outputs
        backend.close()
        TestVectors(inputs={"input": trained.vector_inputs}, outputs=expected).save(src / VECTORS)
        input_shape = tuple(trained.vector_inputs.shape[1:])
        output = outputs[0].name
        postprocessing = (
            Postprocessing(kind="classifier", output=output, labels=basicmotions.LABELS)
            if trained.threshold is None
            else Postprocessing(kind="anomaly", output=output, threshold=trained.threshold)
        )
        manifest = Manifest(
            name=name,
            version=version,
            description=trained.description,
            inputs=tuple(TensorSpec.model_validate(s.model_dump()) for s in inputs),
            outputs=tuple(TensorSpec.model_validate(s.model_dump()) for s in outputs),
            preprocessing=_preprocessing(name),
            postprocessing=postprocessing,
            slo_ms=SLO_MS[name],
            max_batch_size=256,
            metrics=Metrics(
                accuracy=trained.accuracy,
                auc=trained.auc,
                test_samples=trained.test_samples,
                latency=measure_latency(src / MODEL, input_shape),
                machine=f"{platform.machine()} {platform.processor() or ''} "
                f"{os.cpu_count()} cpus".strip(),
            ),
            created_at=created_at or datetime.now(UTC),
        )
        (src / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        manifest = pack_bundle(src, out / bundle_filename(manifest), private)
    return out / bundle_filename(manifest), manifest


def build_all(
    out_dir: Path | str,
    *,
    version: int = 1,
    variant: str = "normal",
    seed: int | None = None,
    names: tuple[str, ...] = tuple(RECIPES),
) -> BuildResult:
    """Build every built-in model into ``<out>/bundles`` and install it into
    ``<out>/repository`` (active), signing with ``<out>/keys/dev.key`` (created if missing)."""
    start = time.perf_counter()
    out = Path(out_dir)
    key_path = out / "keys" / "dev.key"
    private = signing.ensure_key(key_path)
    trusted = signing.load_trusted_keys(signing.public_key_path(key_path))
    result = BuildResult(
        out_dir=out,
        repository=out / "repository",
        key=key_path,
        public_key=signing.public_key_path(key_path),
    )
    repo = ModelRepository(result.repository, trusted_keys=trusted, check=False)
    for name in names:
        path, manifest = build_bundle(name, version, out / "bundles", private, variant, seed)
        repo.install(path)
        result.bundles[name] = path
        result.manifests[name] = manifest
    result.seconds = time.perf_counter() - start
    return result
