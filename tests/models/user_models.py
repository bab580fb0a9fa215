"""Small ONNX models the project does not ship, built with ``onnx.helper`` as a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classifier(path: Path, features: int = 5, classes: int = 2, seed: int = 1) -> Path:
    """``x [N, features] -> probabilities [N, classes]``: a softmax regression."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "user-classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path)


def reducer(path: Path, dims: list[int | str]) -> Path:
    """``x dims -> score [N, 1]``: the mean over every non-batch axis (any rank)."""
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("ReduceMean", ["flat"], ["score"], axes=[1], keepdims=1),
        ],
        "user-reducer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
    )
    return _save(graph, path)


def broken(path: Path) -> Path:
    """``x [N, 5]`` reshaped to ``[-1, 3]``: valid ONNX that fails at run time (5N % 3)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "user-broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 3])],
        [numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")],
    )
    return _save(graph, path)
