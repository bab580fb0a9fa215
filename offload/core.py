"""The transport-neutral data plane of the offload server.

The gRPC servicer and the HTTP routes only convert between their wire format and the
calls here; validation, admission, batching, metrics, statistics and authorisation of
repository control happen once, in this class, whichever protocol a request came by.
Every method raises :class:`~models.errors.EdgecloudError`; each transport maps it to its
status once (``offload.status`` for gRPC, ``shell.http.HTTP_STATUS`` for HTTP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import numpy as np

from models.errors import EdgecloudError, InvalidInput, Unavailable
from offload.admin import AdminPolicy
from offload.admission import BytesInFlight, Reservation
from offload.codec import TensorIn
from offload.loaded_model import LoadedModel
from offload.metrics import ServerMetrics
from offload.model_store import ModelStore
from offload.tracing import SERVER, Tracer, parse_traceparent

log = logging.getLogger(__name__)

SERVER_NAME = "edgecloud-offload"
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
)


def _server_version() -> str:
    try:
        return version("edgecloud")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A transport's request, decoded only as far as its metadata."""

    tensors: Sequence[TensorIn]
    outputs: Sequence[str] = ()
    #: Triton's ``timeout`` request parameter (microseconds), if the client sent one.
    timeout_us: int | None = None


#: A transport's request -> :class:`Parsed`; may be async (HTTP reads its body in it).
Parse = Callable[[], Parsed | Awaitable[Parsed]]


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class InferResult:
    model: LoadedModel
    outputs: list[OutputTensor]


class RepositoryControl(Protocol):
    """Where an authorised load/unload goes: the store itself, or (``--processes`` > 1)
    the supervisor, which applies it to every worker process's store."""

    async def load(self, name: str, version: int | None = None) -> list[int]: ...

    async def unload(self, name: str, version: int | None = None) -> None: ...


class InferenceCore:
    """One server's models, limits and policies, behind every transport."""

    def __init__(
        self,
        store: ModelStore,
        metrics: ServerMetrics,
        admission: BytesInFlight,
        admin: AdminPolicy,
        control: RepositoryControl | None = None,
    ) -> None:
        self.store = store
        self._control: RepositoryControl = store if control is None else control
        self._metrics = metrics
        self._admission = admission
        self._admin = admin
        self.accepting = True
        self.server_version = _server_version()
        self.tracer: Tracer | None = None  # --otlp-endpoint

    # -- read-only ---------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": EXTENSIONS}

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The ready version (``''`` = newest); a miss is counted as a rejected request."""
        try:
            return self.store.get(name, version)
        except EdgecloudError as exc:
            self.reject(exc)
            raise

    def reject(self, exc: EdgecloudError) -> None:
        """Count a request refused before it reached a model."""
        self._metrics.rejected.labels(exc.status.value).inc()

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.store.get(name, version)
        except EdgecloudError:
            return False
        return self.accepting

    def model_metadata(self, model: LoadedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "versions": [str(v) for v in self.store.ready_versions(model.name)],
            "platform": model.platform,
            "inputs": [
                {"name": s.name, "datatype": s.dtype, "shape": list(s.shape)} for s in model.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.dtype, "shape": list(s.shape)} for s in model.outputs
            ],
        }

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's ``model_stats`` entries: every ready version, one model, or one version."""
        if not name:
            if version:
                raise InvalidInput("a model version needs a model name")
            models = sorted(self.store.loaded(), key=lambda m: (m.name, m.version))
        elif version:
            models = [self.model(name, version)]
        else:
            versions = self.store.ready_versions(name)
            if not versions:
                self.model(name)  # raises NotFound, counted
            models = [self.store.get(name, str(v)) for v in versions]
        return [m.metrics.snapshot().as_triton() for m in models]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in self.store.index()
            if not ready_only or e.state == "READY"
        ]

    # -- inference ----------------------------------------------------------------------
    def admit(self, nbytes: int) -> Reservation:
        """Reserve a request's bytes before it is parsed; over budget: Overloaded, counted."""
        try:
            return self._admission.reserve(nbytes)
        except EdgecloudError as exc:
            self.reject(exc)
            raise

    async def infer(
        self,
        model: LoadedModel,
        parse: Parse,
        *,
        reservation: Reservation,
        deadline: float | None,
        started: float,
        traceparent: str | None = None,
    ) -> InferResult:
        """Admit, validate, decode, batch; every outcome is counted on ``model``.

        ``reservation`` is the request's admission (:meth:`admit`), released here. ``parse``
        turns the transport's request into :class:`Parsed`; the HTTP transport reads its
        body in it, so its failures (malformed bytes) are counted like any other bad input.
        ``deadline`` (monotonic) is the transport's own; a ``timeout`` parameter in the
        request can only make it earlier. With a tracer, a caller's W3C ``traceparent``
        makes this inference a span of the caller's trace (``cloud inference``).
        """
        begun = time.monotonic()
        try:
            try:
                result = await self._infer(model, parse, deadline)
            finally:
                reservation.release()
        except EdgecloudError as exc:
            model.metrics.failed(exc.status.value, time.perf_counter() - started)
            self._span(traceparent, model, begun, exc.status.value)
            raise
        model.metrics.ok(time.perf_counter() - started)
        if self.tracer is not None:
            self._span(traceparent, model, begun, "OK")
        return result

    def _span(self, header: str | None, model: LoadedModel, begun: float, code: str) -> None:
        tracer = self.tracer
        parent = parse_traceparent(header) if tracer is not None else None
        if tracer is None or parent is None:
            return
        tracer.record(
            "cloud inference",
            tracer.child(parent),
            parent,
            begun,
            time.monotonic(),
            kind=SERVER,
            model=model.name,
            version=model.version,
            code=code,
        )

    async def _infer(
        self,
        model: LoadedModel,
        parse: Parse,
        deadline: float | None,
    ) -> InferResult:
        if not self.accepting:
            raise Unavailable("server is shutting down")
        pending = parse()
        # isinstance first: gRPC's parse is synchronous, and inspect.isawaitable is slower.
        parsed = pending if isinstance(pending, Parsed) else await pending
        tensors, outputs = parsed.tensors, parsed.outputs
        if parsed.timeout_us is not None:
            asked = time.monotonic() + parsed.timeout_us / 1e6
            deadline = asked if deadline is None else min(deadline, asked)
        if outputs:
            unknown = [o for o in outputs if o not in model.output_names]
            if unknown:
                raise InvalidInput(
                    f"unknown output {unknown[0]!r}; {model.name} has {list(model.output_names)}"
                )
        rows = model.check(tensors)  # names, types, shapes, no empty tensor: nothing decoded yet
        arrays = {t.name: t.decode() for t in tensors}
        computed = await model.batcher.submit(arrays, rows, deadline)
        wanted = set(outputs) if outputs else None
        return InferResult(
            model,
            [
                OutputTensor(spec.name, spec.dtype, computed[spec.name])
                for spec in model.outputs
                if wanted is None or spec.name in wanted
            ],
        )

    # -- repository control ---------------------------------------------------------------
    def authorize_admin(self, authorization: str | None, subject: str | None) -> str:
        try:
            return self._admin.authorize(authorization, subject)
        except EdgecloudError as exc:
            self.reject(exc)
            log.warning("repository control refused: %s", exc.message)
            raise

    async def load(
        self, name: str, version: object, *, authorization: str | None, subject: str | None
    ) -> list[int]:
        """Load ``name`` (one version when ``version`` is given, as the transport got it).

        The caller is authorised before anything of the request is interpreted.
        """
        who = self.authorize_admin(authorization, subject)
        number = self._control_args(name, version)
        versions = await self._control.load(name, number)
        log.info("load %s%s by %s", name, "" if number is None else f":{number}", who)
        return versions

    async def unload(
        self, name: str, version: object, *, authorization: str | None, subject: str | None
    ) -> None:
        who = self.authorize_admin(authorization, subject)
        number = self._control_args(name, version)
        await self._control.unload(name, number)
        log.info("unload %s%s by %s", name, "" if number is None else f":{number}", who)

    @staticmethod
    def _control_args(name: str, version: object) -> int | None:
        if not name:
            raise InvalidInput("model name is empty")
        return version_number(version)


def version_number(raw: object) -> int | None:
    """Our extension's ``version`` parameter of load/unload: None or a positive integer."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise InvalidInput(f"parameter 'version' must be an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
        value = int(raw)
    else:
        raise InvalidInput(f"parameter 'version' must be an integer, got {raw!r}")
    if not 0 < value < 2**63:
        raise InvalidInput(f"parameter 'version' must be a positive integer, got {raw!r}")
    return value
