"""The ceiling row: a grpc.aio KServe V2 server that does nothing but answer.

``python benchmarks/offload/ceiling.py PORT NAME OUTPUT COLUMNS`` serves ServerReady,
ModelReady and ModelInfer on ``127.0.0.1:PORT``. ModelInfer parses the request (any real
server must, to learn the batch size) and returns a pre-serialized response of the right
shape (``[rows, COLUMNS]`` float32 zeros) without running a model, batching or copying.
What offload-server reaches relative to this row is the share of Python gRPC's own
per-call cost it leaves on the table; the same load generator drives both in one run.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

SERVICE = "inference.GRPCInferenceService"


class Ceiling:
    def __init__(self, name: str, output: str, columns: int) -> None:
        self.name = name
        self.output = output
        self.columns = columns
        self._responses: dict[int, bytes] = {}

    def _response(self, rows: int) -> bytes:
        cached = self._responses.get(rows)
        if cached is None:
            r = service_pb2.ModelInferResponse(model_name=self.name, model_version="1")
            out = r.outputs.add()
            out.name, out.datatype = self.output, "FP32"
            out.shape.extend([rows, self.columns])
            r.raw_output_contents.append(np.zeros((rows, self.columns), np.float32).tobytes())
            cached = self._responses[rows] = r.SerializeToString()
        return cached

    async def infer(self, request: bytes, context: object) -> bytes:
        req = service_pb2.ModelInferRequest.FromString(request)
        rows = int(req.inputs[0].shape[0]) if req.inputs and req.inputs[0].shape else 1
        return self._response(rows)

    async def server_ready(self, request: bytes, context: object) -> bytes:
        return service_pb2.ServerReadyResponse(ready=True).SerializeToString()

    async def model_ready(self, request: bytes, context: object) -> bytes:
        name = service_pb2.ModelReadyRequest.FromString(request).name
        return service_pb2.ModelReadyResponse(ready=name == self.name).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        raw = {"request_deserializer": None, "response_serializer": None}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(self.infer, **raw),
                "ServerReady": grpc.unary_unary_rpc_method_handler(self.server_ready, **raw),
                "ModelReady": grpc.unary_unary_rpc_method_handler(self.model_ready, **raw),
            },
        )


async def main(port: int, name: str, output: str, columns: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((Ceiling(name, output, columns).handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ceiling ready on {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
