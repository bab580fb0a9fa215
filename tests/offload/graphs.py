"""Tiny ONNX graphs for offload tests: outputs that identify the model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 4


def affine_model(path: Path, version: int, width: int = WIDTH, batch: int | str = "batch") -> Path:
    """``y = x * 2 + version`` over FP32 [batch, width]; two versions give different outputs.

    An integer ``batch`` fixes the first axis (a graph that cannot be batched).
    """
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    bias = numpy_helper.from_array(np.array(float(version), dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["t"]),
            helper.make_node("Add", ["t", "bias"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
        [two, bias],
    )
    return _save(graph, path)


def slow_model(path: Path, size: int = 1024, rounds: int = 18, width: int = WIDTH) -> Path:
    """``y = x * 2 + 1`` plus a data-dependent matmul chain that cannot be constant-folded.

    Each batch costs ``rounds`` products of ``size`` x ``size`` matrices (~0.1-0.2 s on one
    thread), which lets tests fill queues and outlive deadlines deterministically.
    """
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), "w")
    consts = [
        w,
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Expand", ["s", "square"], ["m0"]),
    ]
    for i in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{rounds}"], ["r"], keepdims=0),
        helper.make_node("Mul", ["r", "zero"], ["z"]),
        helper.make_node("Mul", ["x", "two"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["u"]),
        helper.make_node("Add", ["u", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        consts,
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_repository(root: Path) -> Path:
    """``affine`` v1 and v2 (no config, no manifest) and ``slow`` v1 in Triton layout."""
    affine_model(root / "affine" / "1" / "model.onnx", 1)
    affine_model(root / "affine" / "2" / "model.onnx", 2)
    slow_model(root / "slow" / "1" / "model.onnx")
    return root
