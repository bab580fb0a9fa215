"""The benchmark model: the built-in ``motion-edge`` when a build is available, else a
generated stand-in of the same interface (FP32 [-1, 100, 6] -> FP32 [-1, 4])."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAME = "motion-edge"
WINDOW, CHANNELS, CLASSES = 100, 6, 4


def standin_model(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Normalise, flatten, a ReLU layer and a softmax: an MLP the size of motion-edge."""
    rng = np.random.default_rng(seed)
    flat = WINDOW * CHANNELS
    inits = [
        numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.full(CHANNELS, 0.1, np.float32), "mean"),
        numpy_helper.from_array(np.full(CHANNELS, 2.0, np.float32), "inv_std"),
        numpy_helper.from_array(
            (rng.standard_normal((flat, hidden)) / np.sqrt(flat)).astype(np.float32), "w1"
        ),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array(
            (rng.standard_normal((hidden, CLASSES)) / np.sqrt(hidden)).astype(np.float32), "w2"
        ),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"]),
        helper.make_node("Mul", ["centered", "inv_std"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "motion_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WINDOW, CHANNELS])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def prepare_model(workdir: Path) -> tuple[Path, str]:
    """A one-model Triton repository under ``workdir``; returns (repository, provenance)."""
    repo = workdir / "repository"
    target = repo / NAME / "1" / "model.onnx"
    if repo.exists():
        shutil.rmtree(repo)
    try:
        from models.recipes import build_all

        built = build_all(workdir / "built", names=(NAME,))
        onnx_file = next(built.repository.glob(f"{NAME}/*/model.onnx"))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Only the graph: the bundle's config.pbtxt would set a 1 ms batching delay, and
        # every server here must run with the same (default, no-delay) batching settings.
        shutil.copyfile(onnx_file, target)
        size = onnx_file.stat().st_size
        return repo, f"built-in {NAME} v1 from models.recipes ({size} bytes ONNX)"
    except Exception as exc:  # the recipes may be missing or broken: say so and carry on
        standin_model(target)
        return repo, f"generated stand-in MLP 600-64-4 ({type(exc).__name__}: recipes unavailable)"
