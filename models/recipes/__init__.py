"""Built-in model recipes: deterministic, offline, numpy + ``onnx.helper`` only.

``build_all(out_dir)`` builds ``motion-edge``, ``motion-cloud`` and ``vibration-anomaly``
into a signed-bundle directory and an active Triton-layout repository;
``build_model(...)`` builds one (also the ``nan``/``slow`` variants used by rollout tests);
``demo_inference(out_dir)`` runs one real BasicMotions TEST window through a backend.
"""

from __future__ import annotations

from models.recipes.build import (
    RECIPES,
    VARIANTS,
    BuildResult,
    build_all,
    build_bundle,
    build_model,
    measure_latency,
)
from models.recipes.demo import DemoResult, demo_inference

__all__ = [
    "RECIPES",
    "VARIANTS",
    "BuildResult",
    "DemoResult",
    "build_all",
    "build_bundle",
    "build_model",
    "demo_inference",
    "measure_latency",
]
