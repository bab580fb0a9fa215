"""One real inference, end to end: build if needed, load through ``load_backend``, classify
a real BasicMotions TEST window. The README demo falls back to this."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import basicmotions
from models.backends import load_backend
from models.repository import ModelRepository


@dataclass(frozen=True)
class DemoResult:
    model: str
    version: int
    backend: str
    window_index: int
    label: str
    probabilities: dict[str, float]
    true_label: str
    latency_ms: float
    built: bool

    def render(self) -> str:
        probs = "  ".join(f"{k}={v:.3f}" for k, v in self.probabilities.items())
        verdict = "correct" if self.label == self.true_label else "WRONG"
        return "\n".join(
            [
                f"model        {self.model} v{self.version}"
                + (" (just built)" if self.built else ""),
                f"backend      {self.backend}",
                f"input        BasicMotions TEST window #{self.window_index} (100 x 6 readings)",
                f"prediction   {self.label} ({verdict}; true label {self.true_label})",
                f"probabilities {probs}",
                f"latency      {self.latency_ms:.3f} ms (one batch of 1, after warm-up)",
            ]
        )


def demo_inference(
    out_dir: Path | str, *, model: str = "motion-edge", index: int = 25, kind: str = "auto"
) -> DemoResult:
    """Classify TEST window ``index`` with the active ``model`` under ``out_dir``."""
    out = Path(out_dir)
    repo = ModelRepository(out / "repository", check=False)
    built = False
    if repo.active(model) is None:
        from models.recipes.build import build_all

        build_all(out)
        built = True
    version = repo.active(model)
    assert version is not None
    manifest = repo.manifest(model, version)
    backend = load_backend(repo.model_path(model, version), kind)
    try:
        backend.warmup((1,))
        x, labels = basicmotions.load("test")
        window = x[index : index + 1]
        start = time.perf_counter()
        out_tensors = backend.infer({manifest.inputs[0].name: window})
        latency = (time.perf_counter() - start) * 1e3
        description = backend.description
    finally:
        backend.close()
    probs = out_tensors[manifest.postprocessing.output][0]
    names = manifest.postprocessing.labels
    return DemoResult(
        model=model,
        version=version,
        backend=description,
        window_index=index,
        label=names[int(np.argmax(probs))],
        probabilities={n: float(p) for n, p in zip(names, probs, strict=True)},
        true_label=labels[index],
        latency_ms=latency,
        built=built,
    )
