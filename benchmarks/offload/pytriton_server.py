"""Serve one ONNX model through PyTriton (run with the PyTriton venv's python).

Usage: python pytriton_server.py MODEL.onnx NAME GRPC_PORT HTTP_PORT METRICS_PORT WORKSPACE
The Python inference callable runs ONNX Runtime (one intra-op thread) behind Triton's own
gRPC front end and dynamic batcher; prints ``pytriton ready`` once serving.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    model_file, name, grpc_port, http_port, metrics_port, workspace = sys.argv[1:7]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    outputs = session.get_outputs()

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run([o.name for o in outputs], feeds)
        return dict(zip([o.name for o in outputs], results, strict=True))

    config = TritonConfig(
        grpc_port=int(grpc_port),
        http_port=int(http_port),
        metrics_port=int(metrics_port),
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
    )
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=[
                Tensor(name=i.name, dtype=np.float32, shape=tuple(i.shape[1:])) for i in inputs
            ],
            outputs=[
                Tensor(name=o.name, dtype=np.float32, shape=tuple(o.shape[1:])) for o in outputs
            ],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            strict=False,
        )
        print("pytriton ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
