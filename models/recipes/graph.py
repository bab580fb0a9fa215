"""A tiny ONNX graph builder for the recipes: numpy constants in, ``onnx.helper`` nodes out.

Recipes compute their features with the same graph ops they ship (by running the partial
graph on ONNX Runtime), so training and serving can never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 9  # widely loadable (ORT >= 1.15, TensorRT 10)


class GraphBuilder:
    """Accumulates nodes and initialisers; every helper returns the new tensor's name."""

    def __init__(self, input_name: str, input_shape: tuple[int | str, ...]) -> None:
        self.input = input_name
        self.input_shape = input_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, value: np.ndarray | np.floating | float | list, prefix: str = "c") -> str:
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(
        self,
        op_type: str,
        *inputs: str,
        out: str | None = None,
        n_outputs: int = 1,
        **attrs: Any,
    ) -> str:
        """Add a node; returns its first output (extra outputs are named ``<out>_<i>``)."""
        name = out or self._name(op_type.lower())
        outputs = [name, *(f"{name}_{i}" for i in range(1, n_outputs))]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        return self.op(op_type, x, self.const(np.array(axes, dtype=np.int64)), keepdims=keepdims)

    def model(
        self, output: str, output_shape: tuple[int | str, ...], out_name: str
    ) -> onnx.ModelProto:
        """Finish the graph, renaming ``output`` to the public ``out_name``."""
        self.op("Identity", output, out=out_name)
        graph = helper.make_graph(
            self.nodes,
            "edgecloud",
            [helper.make_tensor_value_info(self.input, TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, output_shape)],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="edgecloud",
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def apply_variant(g: GraphBuilder, y: str, variant: str, heavy_repeats: int) -> str:
    """Post-process ``y`` for the rollout-test variants.

    ``nan``: every output is NaN (a broken model that still loads and runs).
    ``slow``: same outputs, but a chain of dense matmuls on the input is added times zero;
    ONNX Runtime cannot fold ``x * 0`` (NaN semantics), so the extra compute really runs.
    """
    if variant == "normal":
        return y
    if variant == "nan":
        return g.op("Add", y, g.const(np.float32(np.nan)))
    if variant != "slow":
        raise ValueError(f"unknown variant {variant!r}")
    flat = g.op("Flatten", g.input, axis=1)
    width = int(np.prod([d for d in g.input_shape[1:] if isinstance(d, int)]))
    rng = np.random.default_rng(1234)
    # One shared weight keeps the file small; ORT still runs every MatMul.
    w = g.const(rng.standard_normal((width, width)).astype(np.float32) / np.sqrt(width), "heavy")
    h = flat
    for _ in range(heavy_repeats):
        h = g.op("Tanh", g.op("MatMul", h, w))
    zero = g.op("Mul", g.reduce("ReduceSum", h, [1], keepdims=1), g.const(np.float32(0.0)))
    return g.op("Add", y, zero)


def softmax_head(
    g: GraphBuilder, features: str, weights: list[tuple[np.ndarray, np.ndarray]]
) -> str:
    """Dense layers (ReLU between) ending in a softmax over classes."""
    h = features
    for i, (w, b) in enumerate(weights):
        h = g.op("Gemm", h, g.const(w, "w"), g.const(b, "b"))
        if i < len(weights) - 1:
            h = g.op("Relu", h)
    return g.op("Softmax", h, axis=-1)


def run_partial(g: GraphBuilder, tensor: str, x: np.ndarray) -> np.ndarray:
    """Evaluate an intermediate tensor of the graph under construction on ONNX Runtime."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [*g.nodes, helper.make_node("Identity", [tensor], ["partial_out"])],
        "partial",
        [helper.make_tensor_value_info(g.input, TensorProto.FLOAT, g.input_shape)],
        [helper.make_tensor_value_info("partial_out", TensorProto.FLOAT, None)],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {g.input: x.astype(np.float32)})[0]
