"""``inference.GRPCInferenceService`` on grpc.aio: converts protobufs and calls the model store.

This is the only place an :class:`~models.errors.EdgecloudError` becomes a gRPC status
(through :func:`offload.status.grpc_code`). Every error is counted and answered with a
message that names the model, the tensor and what was expected; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import grpc
from prometheus_client import Counter
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.errors import EdgecloudError, InvalidInput, Unavailable
from offload.batcher import Arrays
from offload.codec import SERVER_TIME_PARAM, TIMING_PARAM, request_arrays
from offload.model_store import LoadedModel, ModelStore
from offload.status import grpc_code

log = logging.getLogger(__name__)

SERVER_NAME = "edgecloud-offload"


def _server_version() -> str:
    try:
        return version("edgecloud")
    except PackageNotFoundError:
        return "0"


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe V2 / Triton gRPC surface over a :class:`ModelStore`."""

    def __init__(self, store: ModelStore, rejected: Counter) -> None:
        self._store = store
        self._rejected = rejected
        self.accepting = True
        self._metadata = service_pb2.ServerMetadataResponse(
            name=SERVER_NAME,
            version=_server_version(),
            extensions=["model_repository", "model_configuration", "binary_tensor_data"],
        )

    # -- health -----------------------------------------------------------------------
    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerReadyResponse(ready=self.accepting)

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        try:
            self._store.get(request.name, request.version)
        except EdgecloudError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.accepting)

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return self._metadata

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        model = await self._model(request.name, request.version, context)
        response = service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self._store.ready_versions(model.name)],
            platform=model.platform,
        )
        for spec in model.inputs:
            response.inputs.add(name=spec.name, datatype=spec.dtype, shape=spec.shape)
        for spec in model.outputs:
            response.outputs.add(name=spec.name, datatype=spec.dtype, shape=spec.shape)
        return response

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        model = await self._model(request.name, request.version, context)
        return service_pb2.ModelConfigResponse(config=model.config_proto)

    # -- inference --------------------------------------------------------------------
    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        model = await self._model(request.model_name, request.model_version, context)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            response = await self._infer(model, request, deadline, started)
        except EdgecloudError as exc:
            model.metrics.failed(grpc_code(exc).name)
            await context.abort(grpc_code(exc), exc.message)
        model.metrics.ok(time.perf_counter() - started)
        return response

    async def _infer(
        self,
        model: LoadedModel,
        request: service_pb2.ModelInferRequest,
        deadline: float | None,
        started: float,
    ) -> service_pb2.ModelInferResponse:
        if not self.accepting:
            raise Unavailable("server is shutting down")
        if request.outputs:
            unknown = [o.name for o in request.outputs if o.name not in model.output_names]
            if unknown:
                raise InvalidInput(
                    f"unknown output {unknown[0]!r}; {model.name} has {list(model.output_names)}"
                )
        outputs = await model.infer(request_arrays(request), deadline)
        return self._response(model, request, outputs, started)

    @staticmethod
    def _response(
        model: LoadedModel,
        request: service_pb2.ModelInferRequest,
        outputs: Arrays,
        started: float,
    ) -> service_pb2.ModelInferResponse:
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version_str, id=request.id
        )
        names = [o.name for o in request.outputs] if request.outputs else model.output_names
        for name, spec in zip(model.output_names, model.outputs, strict=True):
            if name not in names:
                continue
            array = outputs[name]
            tensor = response.outputs.add()
            tensor.name = name
            tensor.datatype = spec.dtype
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        if TIMING_PARAM in request.parameters:
            elapsed_us = int((time.perf_counter() - started) * 1e6)
            response.parameters[SERVER_TIME_PARAM].int64_param = elapsed_us
        return response

    async def ModelStreamInfer(  # type: ignore[no-untyped-def]
        self, request_iterator, context
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Triton stream framing: each answer is ``infer_response`` or ``error_message``."""
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(request: service_pb2.ModelInferRequest) -> None:
            started = time.perf_counter()
            try:
                model = self._store.get(request.model_name, request.model_version)
            except EdgecloudError as exc:
                self._rejected.labels(grpc_code(exc).name).inc()
                await out.put(_stream_error(request, exc))
                return
            try:
                response = await self._infer(model, request, None, started)
            except EdgecloudError as exc:
                model.metrics.failed(grpc_code(exc).name)
                await out.put(_stream_error(request, exc))
                return
            model.metrics.ok(time.perf_counter() - started)
            await out.put(service_pb2.ModelStreamInferResponse(infer_response=response))

        async def read() -> None:
            try:
                async for request in request_iterator:
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
        response = service_pb2.RepositoryIndexResponse()
        for entry in self._store.index():
            if request.ready and entry.state != "READY":
                continue
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    async def RepositoryModelLoad(self, request, context):  # type: ignore[no-untyped-def]
        try:
            await self._store.load(request.model_name, _version_param(request.parameters))
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):  # type: ignore[no-untyped-def]
        try:
            await self._store.unload(request.model_name, _version_param(request.parameters))
        except EdgecloudError as exc:
            await context.abort(grpc_code(exc), exc.message)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _model(
        self, name: str, version: str, context: grpc.aio.ServicerContext
    ) -> LoadedModel:
        try:
            return self._store.get(name, version)
        except EdgecloudError as exc:
            self._rejected.labels(grpc_code(exc).name).inc()
            await context.abort(grpc_code(exc), exc.message)
            raise  # unreachable: abort raises


def _stream_error(
    request: service_pb2.ModelInferRequest, exc: EdgecloudError
) -> service_pb2.ModelStreamInferResponse:
    return service_pb2.ModelStreamInferResponse(
        error_message=f"{grpc_code(exc).name}: {exc.message}",
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _version_param(parameters: object) -> int | None:
    """Our extension: a ``version`` parameter loads or unloads one version only."""
    param = parameters.get("version") if hasattr(parameters, "get") else None  # type: ignore[union-attr]
    if param is None:
        return None
    kind = param.WhichOneof("parameter_choice")
    raw = getattr(param, kind) if kind else None
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInput(f"parameter 'version' must be an integer, got {raw!r}") from None
