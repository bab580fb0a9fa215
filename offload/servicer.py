"""``inference.GRPCInferenceService`` on grpc.aio: converts protobufs and calls the core.

Validation, admission, batching, metrics and repository authorisation live in
:class:`offload.core.InferenceCore`, shared with the HTTP routes; this module only maps
protobufs to core calls and an :class:`~models.errors.EdgecloudError` to a gRPC status
(through :func:`offload.status.grpc_code`, the one table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.errors import EdgecloudError, InvalidInput
from offload.admission import Reservation
from offload.codec import SERVER_TIME_PARAM, TIMING_PARAM, request_tensors
from offload.core import SERVER_NAME, InferenceCore, InferResult, Parsed
from offload.status import grpc_code

log = logging.getLogger(__name__)

__all__ = ["SERVER_NAME", "InferenceServicer"]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe V2 / Triton gRPC surface over an :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, max_stream_pending: int = 256) -> None:
        self._core = core
        self._max_stream_pending = max_stream_pending
        self._metadata = json_format.ParseDict(
            core.server_metadata(), service_pb2.ServerMetadataResponse()
        )

    @property
    def accepting(self) -> bool:
        return self._core.accepting

    # -- health -----------------------------------------------------------------------
    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerReadyResponse(ready=self._core.accepting)

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ModelReadyResponse(
            ready=self._core.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return self._metadata

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        model = await self._model(request.name, request.version, context)
        return json_format.ParseDict(
            self._core.model_metadata(model), service_pb2.ModelMetadataResponse()
        )

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        model = await self._model(request.name, request.version, context)
        return service_pb2.ModelConfigResponse(config=model.config_proto)

    async def ModelStatistics(self, request, context):  # type: ignore[no-untyped-def]
        try:
            stats = self._core.statistics(request.name, request.version)
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return json_format.ParseDict({"model_stats": stats}, service_pb2.ModelStatisticsResponse())

    # -- registration -----------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers; inference requests are admitted by size before parsing.

        Same table as the generated ``add_GRPCInferenceServiceServicer_to_server`` except
        for the request deserializer of ModelInfer and ModelStreamInfer (:meth:`_admit`).
        """
        service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        handlers = {}
        for method in service.methods:
            request_cls = getattr(service_pb2, method.input_type.name)
            response_cls = getattr(service_pb2, method.output_type.name)
            admitted = request_cls is service_pb2.ModelInferRequest
            kind = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = kind(
                getattr(self, method.name),
                request_deserializer=self._admit if admitted else request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    def _admit(self, data: bytes) -> _Admitted | _Refused:
        """Reserve the message's size before the protobuf is parsed (no copy when refused)."""
        try:
            reservation = self._core.admit(len(data))
        except EdgecloudError as exc:
            return _Refused(exc)
        try:
            return _Admitted(service_pb2.ModelInferRequest.FromString(data), reservation)
        except DecodeError:
            reservation.release()
            return _Refused(InvalidInput("request is not a valid ModelInferRequest protobuf"))

    # -- inference --------------------------------------------------------------------
    async def ModelInfer(self, admitted, context):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        if isinstance(admitted, _Refused):
            await context.abort(grpc_code(admitted.error), admitted.error.message)
        request, reservation = admitted.message, admitted.reservation
        try:
            model = self._core.model(request.model_name, request.model_version)
        except EdgecloudError as exc:
            reservation.release()
            await context.abort(grpc_code(exc), exc.message)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # The metadata is a tuple built per call: read it only when spans are recorded.
        traceparent = None if self._core.tracer is None else _metadata(context, "traceparent")
        try:
            result = await self._core.infer(
                model,
                lambda: _parse(request),
                reservation=reservation,
                deadline=deadline,
                started=started,
                traceparent=traceparent,
            )
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return _response(request, result, started)

    async def ModelStreamInfer(  # type: ignore[no-untyped-def]
        self, request_iterator, context
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Triton stream framing: each answer is ``infer_response`` or ``error_message``.

        At most ``max_stream_pending`` requests of one stream are in progress; beyond that
        the reader stops reading (gRPC flow control pushes back on the client), so a fast
        writer cannot grow the server's queues without bound.
        """
        limit = self._max_stream_pending
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue(limit + 1)
        slots = asyncio.Semaphore(limit)
        pending: set[asyncio.Task[None]] = set()

        async def one(admitted: _Admitted | _Refused) -> None:
            started = time.perf_counter()
            try:
                if isinstance(admitted, _Refused):
                    empty = service_pb2.ModelInferRequest()
                    await out.put(_stream_error(empty, admitted.error))
                    return
                request, reservation = admitted.message, admitted.reservation
                try:
                    try:
                        model = self._core.model(request.model_name, request.model_version)
                    except EdgecloudError:
                        reservation.release()
                        raise
                    result = await self._core.infer(
                        model,
                        lambda: _parse(request),
                        reservation=reservation,
                        deadline=None,
                        started=started,
                    )
                except EdgecloudError as exc:
                    await out.put(_stream_error(request, exc))
                    return
                response = _response(request, result, started)
                await out.put(service_pb2.ModelStreamInferResponse(infer_response=response))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
            finally:
                await out.put(None)

        reader = asyncio.create_task(read(), name="stream-reader")
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    # -- repository -------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):  # type: ignore[no-untyped-def]
        return json_format.ParseDict(
            {"models": self._core.index(request.ready)}, service_pb2.RepositoryIndexResponse()
        )

    async def RepositoryModelLoad(self, request, context):  # type: ignore[no-untyped-def]
        try:
            await self._core.load(
                request.model_name, _version_param(request.parameters), **_caller(context)
            )
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):  # type: ignore[no-untyped-def]
        try:
            await self._core.unload(
                request.model_name, _version_param(request.parameters), **_caller(context)
            )
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        try:
            return self._core.model(name, version)
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
            raise  # unreachable: abort raises


class _Admitted:
    """A parsed inference request and its admission (released when answered)."""

    __slots__ = ("message", "reservation")

    def __init__(self, message: service_pb2.ModelInferRequest, reservation: Reservation) -> None:
        self.message = message
        self.reservation = reservation


class _Refused:
    """An inference request refused before parsing; the handler answers with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: EdgecloudError) -> None:
        self.error = error


def _parse(request: service_pb2.ModelInferRequest) -> Parsed:
    timeout = request.parameters.get("timeout")
    timeout_us = None
    if timeout is not None:
        kind = timeout.WhichOneof("parameter_choice")
        value = getattr(timeout, kind) if kind else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
        timeout_us = value or None  # Triton: 0 means no timeout
    return Parsed(request_tensors(request), [o.name for o in request.outputs], timeout_us)


def _response(
    request: service_pb2.ModelInferRequest, result: InferResult, started: float
) -> service_pb2.ModelInferResponse:
    model = result.model
    response = service_pb2.ModelInferResponse(
        model_name=model.name, model_version=model.version_str, id=request.id
    )
    for out in result.outputs:
        tensor = response.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(out.array.shape)
        response.raw_output_contents.append(out.array.tobytes())
    if TIMING_PARAM in request.parameters:
        elapsed_us = int((time.perf_counter() - started) * 1e6)
        response.parameters[SERVER_TIME_PARAM].int64_param = elapsed_us
    return response


def _caller(context: grpc.aio.ServicerContext) -> dict[str, str | None]:
    """The credentials a repository call came with: bearer metadata, verified client CN."""
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else value.decode("latin-1")
    names = (context.auth_context() or {}).get("x509_common_name") or []
    subject = names[0].decode("utf-8", "replace") if names else None
    return {"authorization": authorization, "subject": subject}


def _stream_error(
    request: service_pb2.ModelInferRequest, exc: EdgecloudError
) -> service_pb2.ModelStreamInferResponse:
    return service_pb2.ModelStreamInferResponse(
        error_message=f"{grpc_code(exc).name}: {exc.message}",
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _version_param(parameters: object) -> object:
    """Our extension: a ``version`` parameter loads or unloads one version only (raw value;
    the core parses it after authorising the caller)."""
    param = parameters.get("version") if hasattr(parameters, "get") else None  # type: ignore[union-attr]
    if param is None:
        return None
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def _metadata(context: Any, key: str) -> str | None:
    """One value of the call's invocation metadata (None when absent)."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None
