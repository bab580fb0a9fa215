"""One ModelStreamInfer call shared by many requests, matched by request id."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.errors import DeadlineExceeded, EdgecloudError, Unavailable
from offload.status import error_for_code, error_from_rpc


class InferStream:
    """One ModelStreamInfer call multiplexed by request id (Triton's stream framing)."""

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        self._call = stub.ModelStreamInfer()
        self._pending: dict[str, asyncio.Future[service_pb2.ModelInferResponse]] = {}
        self.broken = False
        self._write_lock = asyncio.Lock()  # grpc.aio allows one outstanding write per call
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="offload-stream")

    async def call(
        self, request: service_pb2.ModelInferRequest, timeout_s: float
    ) -> service_pb2.ModelInferResponse:
        future: asyncio.Future[service_pb2.ModelInferResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request.id] = future
        try:
            async with self._write_lock:
                try:
                    await self._call.write(request)
                except grpc.RpcError:
                    self.broken = True
                    raise
                except Exception as exc:  # writing to a finished call (UsageError, state errors)
                    self.broken = True
                    raise Unavailable(f"offload stream is closed: {exc!r}") from exc
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"stream response {request.id} not back in {timeout_s:.3f}s"
            ) from None
        finally:
            self._pending.pop(request.id, None)

    async def _read(self) -> None:
        try:
            async for message in self._call:
                future = self._pending.get(message.infer_response.id)
                if future is None or future.done():
                    continue
                if message.error_message:
                    future.set_exception(_stream_error(message.error_message))
                else:
                    future.set_result(message.infer_response)
        except grpc.RpcError as exc:
            self._break(error_from_rpc(exc, "stream"))
            return
        self._break(Unavailable("stream closed by the server"))

    def _break(self, error: EdgecloudError) -> None:
        self.broken = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.broken = True
        self._call.cancel()
        self._reader.cancel()


def _stream_error(message: str) -> EdgecloudError:
    """Stream errors arrive as text '<CODE>: detail' (our server) or plain text (Triton)."""
    code_name, _, detail = message.partition(": ")
    code = getattr(grpc.StatusCode, code_name, None)
    if isinstance(code, grpc.StatusCode):
        return error_for_code(code, detail)
    return EdgecloudError(message)
