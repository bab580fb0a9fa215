"""KServe V2 HTTP/REST on the offload server (aiohttp), plus ``/healthz`` and ``/readyz``.

Routes only convert JSON (and Triton's binary tensor data extension) to
:class:`~offload.core.InferenceCore` calls and back; validation, admission, batching,
metrics and repository authorisation are the same code the gRPC servicer calls. Errors
are ``{"error": "<one line>"}`` with the status of ``shell.http.HTTP_STATUS``.

Binary tensor data: a body whose first ``Inference-Header-Content-Length`` bytes are the
JSON header, followed by each binary input's bytes in input order (sizes in the inputs'
``parameters.binary_data_size``). Outputs are binary when the output asks for it
(``parameters.binary_data``) or the request does (``parameters.binary_data_output``).

With mutual TLS configured, every route except the health routes requires a verified
client certificate (the TLS handshake makes it optional so kubelet probes can connect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from models.errors import ConfigError, EdgecloudError, InvalidInput, Unauthenticated
from offload.codec import DATATYPES, TensorIn
from offload.core import InferenceCore, InferResult, Parsed
from offload.tls import TlsFiles
from shell.http import HTTP_STATUS

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
#: Open to anyone who can connect, even with mutual TLS on (probes carry no certificate).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
JSON_TYPE = "application/json"
#: JSON headers larger than this are parsed in a thread (about 1 ms of json.loads).
INLINE_JSON_BYTES = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class V2Routes:
    """The route handlers; state is the core and two limits."""

    def __init__(self, core: InferenceCore, *, max_body: int, mutual_tls: bool) -> None:
        self._core = core
        self._max_body = max_body
        self._mutual_tls = mutual_tls

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_body, middlewares=[self._errors, self._client_cert]
        )
        get, post = web.get, web.post
        m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        app.add_routes(
            [
                get("/healthz", self.healthz),
                get("/readyz", self.readyz),
                get("/v2/health/live", self.live),
                get("/v2/health/ready", self.ready),
                get("/v2", self.server_metadata),
                get("/v2/models/stats", self.stats),
                get(m, self.model_metadata),
                get(mv, self.model_metadata),
                get(m + "/ready", self.model_ready),
                get(mv + "/ready", self.model_ready),
                get(m + "/config", self.model_config),
                get(mv + "/config", self.model_config),
                get(m + "/stats", self.stats),
                get(mv + "/stats", self.stats),
                post(m + "/infer", self.infer),
                post(mv + "/infer", self.infer),
                post("/v2/repository/index", self.index),
                post("/v2/repository/models/{model}/load", self.load),
                post("/v2/repository/models/{model}/unload", self.unload),
            ]
        )
        return app

    # -- middlewares -----------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgecloudError as exc:
            return error_response(HTTP_STATUS.get(exc.status, 500), exc.message)
        except web.HTTPRequestEntityTooLarge:
            self._core.reject(InvalidInput("body too large"))
            return error_response(
                413, f"request body exceeds {self._max_body} bytes (--max-message-bytes)"
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason or "error")
        except Exception as exc:  # a bug: still one JSON line, and the traceback in the log
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}")

    @web.middleware
    async def _client_cert(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._mutual_tls and request.path not in PUBLIC_PATHS:
            transport = request.transport
            if transport is None or not transport.get_extra_info("peercert"):
                raise Unauthenticated("a client certificate signed by the server's CA is required")
        return await handler(request)

    # -- health ------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self._core.accepting:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready", "models": len(self._core.store.loaded())})

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._core.accepting else 400)

    # -- metadata ----------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.Response:
        meta = self._core.server_metadata()
        return web.json_response({**meta, "extensions": list(meta["extensions"])})

    def _model(self, request: web.Request):  # type: ignore[no-untyped-def]
        return self._core.model(request.match_info["model"], request.match_info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self._core.model_metadata(self._model(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self._core.model_ready(
            request.match_info["model"], request.match_info.get("version", "")
        )
        return web.Response(status=200 if ready else 400)

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(config_json(self._model(request).config_proto))

    async def stats(self, request: web.Request) -> web.Response:
        stats = self._core.statistics(
            request.match_info.get("model", ""), request.match_info.get("version", "")
        )
        return web.json_response({"model_stats": stats})

    # -- inference ---------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        model = self._model(request)
        nbytes = request.content_length
        if nbytes is None or nbytes > self._max_body:
            nbytes = self._max_body  # unknown length (chunked): reserve the most it may be
        parsed = _HttpInfer()

        async def parse() -> Parsed:
            body = await request.read()
            header = request.headers.get(HEADER_LENGTH)
            json_bytes = len(body) if header is None or not header.isdigit() else int(header)
            if json_bytes > INLINE_JSON_BYTES:
                # JSON tensors of a big batch take milliseconds to parse: not on the loop.
                return await asyncio.to_thread(parsed.parse, body, header)
            return parsed.parse(body, header)

        reservation = self._core.admit(nbytes)  # before the body is read
        result = await self._core.infer(
            model,
            parse,
            reservation=reservation,
            deadline=None,
            started=started,
            traceparent=request.headers.get("traceparent"),
        )
        return parsed.response(result)

    # -- repository --------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' must be true or false")
        return web.json_response(self._core.index(ready))

    async def load(self, request: web.Request) -> web.Response:
        name, version, caller = await self._control(request)
        await self._core.load(name, version, **caller)
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        name, version, caller = await self._control(request)
        await self._core.unload(name, version, **caller)
        return web.json_response({})

    async def _control(self, request: web.Request) -> tuple[str, object, dict[str, str | None]]:
        # Authenticate before reading or trusting the body.
        caller = {
            "authorization": request.headers.get("Authorization"),
            "subject": _peer_common_name(request),
        }
        self._core.authorize_admin(caller["authorization"], caller["subject"])
        body = await _json_body(request)
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidInput("'parameters' must be an object")
        return request.match_info["model"], params.get("version"), caller


class _HttpInfer:
    """One HTTP inference: parses the request and remembers how to shape the answer."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.binary_default = False
        self.binary: dict[str, bool] = {}

    def parse(self, body: bytes, header_length: str | None) -> Parsed:
        head: bytes
        tail: bytes | memoryview
        if header_length is None:
            head, tail = body, b""
        else:
            try:
                n = int(header_length)
            except ValueError:
                raise InvalidInput(f"{HEADER_LENGTH} is not an integer") from None
            if not 0 <= n <= len(body):
                raise InvalidInput(f"{HEADER_LENGTH} {n} is outside the {len(body)}-byte body")
            head, tail = body[:n], memoryview(body)[n:]
        doc = _loads(head)
        if not isinstance(doc, dict):
            raise InvalidInput("inference request must be a JSON object")
        rid = doc.get("id")
        if rid is not None:
            if not isinstance(rid, str):
                raise InvalidInput("'id' must be a string")
            self.id = rid
        params = _object(doc.get("parameters"), "parameters")
        self.binary_default = params.get("binary_data_output") is True
        timeout = params.get("timeout")
        if timeout is not None and (
            not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0
        ):
            raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInput("'inputs' must be a non-empty array")
        tensors: list[TensorIn] = []
        offset = 0
        for item in inputs:
            tensor, size = _input(item, tail, offset)
            offset += size
            tensors.append(tensor)
        if offset != len(tail):
            raise InvalidInput(
                f"{len(tail)} bytes of binary data after the JSON header, inputs declare {offset}"
            )
        outputs: list[str] = []
        raw_outputs = doc.get("outputs", [])
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be an array")
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput("each output must be an object with a string 'name'")
            oparams = _object(item.get("parameters"), f"output {item['name']!r} parameters")
            if "binary_data" in oparams:
                self.binary[item["name"]] = oparams["binary_data"] is True
            outputs.append(item["name"])
        return Parsed(tensors, outputs, timeout or None)  # Triton: 0 means no timeout

    def response(self, result: InferResult) -> web.Response:
        model = result.model
        doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version_str}
        if self.id is not None:
            doc["id"] = self.id
        blobs: list[bytes] = []
        outs = []
        for out in result.outputs:
            entry: dict[str, Any] = {
                "name": out.name,
                "datatype": out.datatype,
                "shape": list(out.array.shape),
            }
            if self.binary.get(out.name, self.binary_default):
                blob = out.array.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = out.array.reshape(-1).tolist()
            outs.append(entry)
        doc["outputs"] = outs
        head = json.dumps(doc, separators=(",", ":")).encode()
        if not blobs:
            return web.Response(body=head, content_type=JSON_TYPE)
        return web.Response(
            body=b"".join([head, *blobs]),
            headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"},
        )


def _input(item: object, tail: memoryview | bytes, offset: int) -> tuple[TensorIn, int]:
    if not isinstance(item, dict):
        raise InvalidInput("each input must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInput("each input needs a string 'name'")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be an array of non-negative integers")
    params = _object(item.get("parameters"), f"input {name!r} parameters")
    size = params.get("binary_data_size")
    has_data = "data" in item
    if size is None:
        if not has_data:
            raise InvalidInput(f"input {name!r}: neither 'data' nor binary_data_size given")
        return TensorIn(name, datatype, tuple(shape), data=item["data"]), 0
    if has_data:
        raise InvalidInput(f"input {name!r}: both 'data' and binary data given; send one of them")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(tail):
        raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the end of the body")
    return TensorIn(name, datatype, tuple(shape), raw=tail[offset : offset + size]), size


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{what}' must be a JSON object")
    return value


def _loads(raw: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(raw))
    except RecursionError:
        raise InvalidInput("JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    doc = _loads(raw)
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object")
    return doc


def _peer_common_name(request: web.Request) -> str | None:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def config_json(config: Any) -> dict[str, Any]:
    """A ModelConfig as Triton's REST JSON: proto field names, 64-bit integers as numbers."""
    from google.protobuf import json_format

    doc = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _int64_numbers(config, doc)


def _int64_numbers(message: Any, doc: Any) -> Any:
    """MessageToDict renders int64 as strings; Triton's REST config has numbers."""
    from google.protobuf.descriptor import FieldDescriptor

    int64 = {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
    for field in message.DESCRIPTOR.fields:
        key = field.name
        if key not in doc:
            continue
        value = getattr(message, key)
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if field.type in int64:
            doc[key] = [int(v) for v in doc[key]] if repeated else int(doc[key])
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                vfield = field.message_type.fields_by_name["value"]
                if vfield.type == FieldDescriptor.TYPE_MESSAGE:
                    for k in doc[key]:
                        doc[key][k] = _int64_numbers(value[k], doc[key][k])
            elif repeated:
                doc[key] = [_int64_numbers(v, d) for v, d in zip(value, doc[key], strict=True)]
            else:
                doc[key] = _int64_numbers(value, doc[key])
    return doc


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the same files as gRPC; a CA makes client certs checked
    (optional in the handshake, required by the middleware outside the health routes)."""
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            context.load_verify_locations(str(tls.ca))
            context.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up TLS for the HTTP port: {exc}") from exc
    return context
