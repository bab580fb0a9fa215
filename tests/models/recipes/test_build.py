"""Built-in recipes: deterministic, accurate enough, variants behave as rollout tests need."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from models import basicmotions, bundle, vibration
from models.backends.onnxruntime import OrtBackend
from models.recipes import build_bundle
from models.repository import ModelRepository

NAMES = ("motion-edge", "motion-cloud", "vibration-anomaly")


def _unpacked(path: Path, trusted, dest: Path) -> Path:
    bundle.unpack_bundle(path, dest, trusted)
    return dest


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic(name: str, dev_key, trusted, tmp_path: Path) -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    a, ma = build_bundle(name, 1, tmp_path / "a", dev_key, created_at=when)
    b, mb = build_bundle(name, 1, tmp_path / "b", dev_key, created_at=when)
    assert ma.files == mb.files
    da, db = _unpacked(a, trusted, tmp_path / "da"), _unpacked(b, trusted, tmp_path / "db")
    for file in ("model.onnx", "test_vectors.npz"):
        assert (da / file).read_bytes() == (db / file).read_bytes()
    # Only measured latency may differ between two builds.
    assert ma.model_copy(update={"metrics": mb.metrics}) == mb


def test_builtins_reach_sane_quality(built) -> None:
    m = built.manifests
    assert m["motion-edge"].metrics.accuracy >= 0.9
    assert m["motion-cloud"].metrics.accuracy >= 0.9
    assert m["motion-edge"].metrics.test_samples == 40
    assert m["vibration-anomaly"].metrics.auc >= 0.95
    for manifest in m.values():
        assert {lm.batch_size for lm in manifest.metrics.latency} == {1, 64}
        assert all(0 < lm.p50_ms <= lm.p99_ms for lm in manifest.metrics.latency)


def test_manifests_match_the_contract(built) -> None:
    repo = ModelRepository(built.repository)
    for name in NAMES:
        assert repo.active(name) == 1
    edge = repo.manifest("motion-edge", 1)
    assert edge.inputs[0].shape == (-1, 100, 6)
    assert edge.outputs[0].name == "probabilities" and edge.outputs[0].shape == (-1, 4)
    assert edge.postprocessing.labels == ("Standing", "Running", "Walking", "Badminton")
    assert edge.preprocessing.channels == basicmotions.CHANNELS
    assert edge.preprocessing.normalization is None  # normalised inside the graph
    vib = repo.manifest("vibration-anomaly", 1)
    assert vib.inputs[0].shape == (-1, vibration.WINDOW, 3)
    assert vib.outputs[0].name == "score" and vib.outputs[0].shape == (-1, 1)
    assert vib.postprocessing.threshold is not None


def test_anomaly_threshold_separates_healthy_from_faulty(built) -> None:
    repo = ModelRepository(built.repository)
    manifest = repo.manifest("vibration-anomaly", 1)
    backend = OrtBackend(repo.model_path("vibration-anomaly", 1))
    threshold = manifest.postprocessing.threshold
    healthy = backend.infer({"input": vibration.windows(200, seed=424242)})["score"][:, 0]
    bearing = backend.infer({"input": vibration.windows(50, fault="bearing", seed=5)})["score"]
    assert (healthy > threshold).mean() < 0.05
    assert (bearing[:, 0] > threshold).mean() > 0.9


def test_variants_nan_slow_and_seed(dev_key, trusted, tmp_path: Path) -> None:
    x, _ = basicmotions.load("test")
    outs = {}
    for variant, seed in (("normal", 1), ("nan", 1), ("slow", 1), ("normal", 2)):
        path, manifest = build_bundle("motion-edge", 2, tmp_path / variant, dev_key, variant, seed)
        directory = _unpacked(path, trusted, tmp_path / f"u-{variant}-{seed}")
        backend = OrtBackend(directory / "model.onnx")
        outs[(variant, seed)] = backend.infer({"input": x})["probabilities"]
        outs[(variant, seed, "p50")] = manifest.metrics.latency[1].p50_ms
    normal = outs[("normal", 1)]
    assert np.isnan(outs[("nan", 1)]).all()
    np.testing.assert_allclose(outs[("slow", 1)], normal, rtol=1e-5, atol=1e-6)
    assert outs[("slow", 1, "p50")] > 3 * outs[("normal", 1, "p50")]
    other_seed = outs[("normal", 2)]
    assert not np.allclose(other_seed, normal, atol=1e-4), "versions must be distinguishable"
    assert np.abs(other_seed - normal).max() < 0.5, "but only slightly different"


def test_cli_build_then_demo_prints_a_real_inference(tmp_path: Path) -> None:
    out = tmp_path / "b"
    build = subprocess.run(
        [sys.executable, "-m", "models", "build", "--out", str(out), "--model", "motion-edge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert re.search(r"motion-edge\s+1\s+acc (0\.9\d\d|1\.000)", build.stdout), build.stdout
    demo = subprocess.run(
        [sys.executable, "-m", "models", "demo", "--out", str(out), "--index", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    _, labels = basicmotions.load("test")
    assert f"true label {labels[5]}" in demo.stdout
    assert "probabilities Standing=" in demo.stdout
    assert "backend      onnxruntime" in demo.stdout


def test_demo_builds_when_missing(tmp_path: Path) -> None:
    from models.recipes import demo_inference

    result = demo_inference(tmp_path, index=30)
    assert result.built
    assert result.true_label == basicmotions.load("test")[1][30]
    assert abs(sum(result.probabilities.values()) - 1) < 1e-4
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert not demo_inference(tmp_path, index=30).built
