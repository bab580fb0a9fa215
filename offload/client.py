"""The edge-side offload client: one reused grpc.aio channel, deadlines, retries, a breaker.

Every call's gRPC deadline is the request's remaining budget. Only UNAVAILABLE is retried,
with jittered backoff, and only while the budget lasts. Transport failures, overload and
timeouts with a fair budget count against the circuit breaker; a timeout whose budget was
below the remote's measured p95 is the caller's problem and is excused (see
:meth:`BreakerConfig.charges_deadline_miss`); a remote that answers (even with
INVALID_ARGUMENT) counts as healthy. Every failed call also enters the RTT estimates as a
censored sample, so a stalling remote looks slow to the routing policy instead of keeping
its last good numbers. Failures surface as :mod:`models.errors` classes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.errors import DeadlineExceeded, EdgecloudError, Status, Unavailable
from offload.breaker import BreakerConfig, CircuitBreaker
from offload.codec import SERVER_TIME_PARAM, TIMING_PARAM, build_request, response_arrays
from offload.stats import LatencyEstimator, RemoteStats
from offload.status import error_from_rpc
from offload.stream import InferStream
from offload.tls import TlsFiles, channel_credentials

#: Statuses that prove the remote is up and judging requests (they never open the breaker).
_HEALTHY_REFUSALS = frozenset(
    {
        Status.INVALID_ARGUMENT,
        Status.NOT_FOUND,
        Status.ALREADY_EXISTS,
        Status.FAILED_PRECONDITION,
        Status.UNAUTHENTICATED,
        Status.PERMISSION_DENIED,
    }
)


class OffloadClient:
    """Async KServe V2 client for one remote ``host:port``; use ``async with`` or start/close."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsFiles | None = None,
        breaker: BreakerConfig = BreakerConfig(),  # noqa: B008 - frozen value object
        max_retries: int = 2,
        clock: Callable[[], float] = time.monotonic,
        retry_backoff_s: float = 0.005,
        stream: bool = False,
        max_message_bytes: int = 64 * 1024 * 1024,
        admin_token: str | None = None,
        server_name: str | None = None,
        own_connection: bool = False,
    ) -> None:
        self.target = target
        # gRPC shares one connection among channels to the same target with the same
        # options; a client that must reach another of the server's SO_REUSEPORT worker
        # processes (tests, load generators) needs a connection of its own.
        self._own_connection = own_connection
        # The name the TLS certificate carries when ``target`` is one replica's address
        # (offload/replicas.py dials pod IPs that a headless Service's name resolved to).
        self._server_name = server_name
        # Sent only on repository load/unload (the server's --admin-token-file).
        self._admin_metadata = (
            (("authorization", f"Bearer {admin_token}"),) if admin_token else None
        )
        self._tls = tls
        self.breaker = CircuitBreaker(breaker, clock)
        self.max_retries = max_retries
        self._clock = clock
        self._backoff = retry_backoff_s
        self._use_stream = stream
        self._max_message = max_message_bytes
        self._rtt = LatencyEstimator(clock=clock)
        self._server = LatencyEstimator(clock=clock)
        self._calls = 0
        self._failures = 0
        self._excused = 0
        self._ids = itertools.count(1)
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._stream: InferStream | None = None

    async def start(self) -> None:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", self._max_message),
            ("grpc.max_send_message_length", self._max_message),
            # Fail fast while the server is down instead of backing off for seconds.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.min_reconnect_backoff_ms", 100),
        ]
        if self._own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        if self._server_name is not None:
            options += [
                ("grpc.ssl_target_name_override", self._server_name),
                ("grpc.default_authority", self._server_name),
            ]
        if self._tls is not None and (self._tls.ca or self._tls.cert):
            creds = channel_credentials(self._tls)
            self._channel = grpc.aio.secure_channel(self.target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> OffloadClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def available(self) -> bool:
        """Whether the breaker lets a call through now."""
        return self.breaker.allows()

    @property
    def stats(self) -> RemoteStats:
        return RemoteStats(
            rtt_ewma_s=self._rtt.ewma or 0.0,
            rtt_p95_s=self._rtt.quantile(0.95) or 0.0,
            server_ewma_s=self._server.ewma or 0.0,
            breaker_state=self.breaker.state.value,
            calls=self._calls,
            failures=self._failures,
            excused=self._excused,
        )

    def _require_stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            raise Unavailable(f"offload client for {self.target} is not started")
        return self._stub

    async def infer(
        self,
        model: str,
        version: int | None,
        inputs: Mapping[str, np.ndarray],
        deadline: float,
        answered_by: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch remotely before ``deadline`` (absolute, on this client's clock).

        ``traceparent`` (W3C trace context, :mod:`offload.tracing`) travels in the call's
        gRPC metadata so the cloud tier's span joins the caller's trace.

        ``answered_by``, when given, receives the ``model`` and ``version`` the server
        says answered (a request without a version runs whatever the server has ready).
        """
        stub = self._require_stub()
        if deadline - self._clock() <= 0:
            raise DeadlineExceeded(f"no time left to offload {model} to {self.target}")
        request = build_request(model, version, inputs, request_id=str(next(self._ids)))
        request.parameters[TIMING_PARAM].bool_param = True
        if not self.breaker.acquire():
            raise Unavailable(f"circuit to {self.target} is {self.breaker.state.value}")
        self._calls += 1
        call_started = self._clock()
        unreachable = False  # an UNAVAILABLE on any attempt condemns the call
        attempt = 0
        try:
            while True:
                started = self._clock()
                remaining = deadline - started
                if remaining <= 0:  # only after a retry pause, so unreachable is set
                    error: EdgecloudError = DeadlineExceeded(
                        f"offload budget to {self.target} spent after retries"
                    )
                    self._settle(error, remaining, call_started, unreachable)
                    raise error
                try:
                    if self._use_stream:
                        response = await self._stream_call(request, remaining)
                    else:
                        response = await stub.ModelInfer(
                            request,
                            timeout=remaining,
                            metadata=(("traceparent", traceparent),) if traceparent else None,
                        )
                except grpc.RpcError as exc:
                    code = exc.code() if callable(getattr(exc, "code", None)) else None
                    if code == grpc.StatusCode.UNAVAILABLE:
                        unreachable = True
                        if attempt < self.max_retries:
                            pause = self._backoff * (2**attempt) * random.uniform(0.5, 1.5)
                            if self._clock() + pause < deadline:
                                attempt += 1
                                await asyncio.sleep(pause)
                                continue
                    error = error_from_rpc(exc, f"{model} on {self.target}")
                    self._settle(error, remaining, call_started, unreachable)
                    raise error from None
                except EdgecloudError as exc:  # stream path: errors arrive already mapped
                    self._settle(exc, remaining, call_started, unreachable)
                    raise
                self._observe(response, self._clock() - call_started)
                if answered_by is not None:
                    answered_by["model"] = response.model_name
                    answered_by["version"] = response.model_version
                return response_arrays(response)
        except asyncio.CancelledError:
            # A hedge that lost: says nothing about the remote, but a half-open probe
            # slot must not leak or the breaker could never close again.
            self.breaker.release()
            raise

    def _settle(
        self, error: EdgecloudError, budget_s: float, call_started: float, unreachable: bool
    ) -> None:
        """Tell the breaker and the estimates what a failed attempt says about the remote."""
        if error.status in _HEALTHY_REFUSALS:  # it answered, whatever earlier attempts saw
            self.breaker.record_success()
            return
        self._failures += 1
        self._rtt.observe_censored(self._clock() - call_started)
        if (
            error.status is Status.DEADLINE_EXCEEDED
            and not unreachable
            and not self.breaker.config.charges_deadline_miss(
                budget_s, self._rtt.exact_quantile(0.95)
            )
        ):
            self._excused += 1
            self.breaker.release()
            return
        self.breaker.record_failure()

    def _observe(self, response: service_pb2.ModelInferResponse, rtt: float) -> None:
        self.breaker.record_success()
        self._rtt.observe(rtt)
        param = response.parameters.get(SERVER_TIME_PARAM)
        if param is not None:
            self._server.observe(param.int64_param / 1e6)

    async def _stream_call(
        self, request: service_pb2.ModelInferRequest, timeout_s: float
    ) -> service_pb2.ModelInferResponse:
        if self._stream is None or self._stream.broken:
            self._stream = InferStream(self._require_stub())
        return await self._stream.call(request, timeout_s)

    # -- control plane (the gateway uses these to load versions into the cloud tier) --
    async def load_model(
        self, name: str, version: int | None = None, timeout_s: float = 60.0
    ) -> None:
        request = service_pb2.RepositoryModelLoadRequest(model_name=name)
        if version is not None:
            request.parameters["version"].int64_param = version
        await self._control(
            self._require_stub().RepositoryModelLoad, request, timeout_s, self._admin_metadata
        )

    async def unload_model(
        self, name: str, version: int | None = None, timeout_s: float = 60.0
    ) -> None:
        request = service_pb2.RepositoryModelUnloadRequest(model_name=name)
        if version is not None:
            request.parameters["version"].int64_param = version
        await self._control(
            self._require_stub().RepositoryModelUnload, request, timeout_s, self._admin_metadata
        )

    async def repository_index(self, timeout_s: float = 10.0) -> list[dict[str, str]]:
        response = await self._control(
            self._require_stub().RepositoryIndex, service_pb2.RepositoryIndexRequest(), timeout_s
        )
        return [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in response.models
        ]

    async def model_ready(
        self, name: str, version: int | None = None, timeout_s: float = 5.0
    ) -> bool:
        request = service_pb2.ModelReadyRequest(
            name=name, version="" if version is None else str(version)
        )
        response = await self._control(self._require_stub().ModelReady, request, timeout_s)
        return bool(response.ready)

    async def _control(
        self, method: Any, request: Any, timeout_s: float, metadata: Any = None
    ) -> Any:
        try:
            return await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.target) from None
