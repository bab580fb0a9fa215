"""Reading payloads: JSON single reading, JSON window/chunk, compact binary; one validator.

Accepted forms (``C`` = channels of the active model, ``W`` = its window):

* JSON reading: ``{"ts": 1700000000.5, "seq": 42, "values": [c0, ..., cC-1]}``
  (``values`` may also be an object ``{"acc_x": ..., ...}`` keyed by channel name).
* JSON chunk/window: ``{"ts", "seq", "values": [[...C...], ...]}`` with 1..W rows; ``ts``
  and ``seq`` belong to the LAST row, earlier rows get ``seq - n + 1 ...``.
* Binary (little-endian), for high rates::

      offset size  field
      0      2     magic b"EC"
      2      1     version (1)
      3      1     flags (reserved, 0)
      4      8     seq   u64
      12     8     ts    f64 (unix seconds; NaN = unknown)
      20     2     n_samples  u16 (1..W)
      22     2     n_channels u16 (== C)
      24     4*n*C values float32, row-major (sample, channel)

``seq`` and ``ts`` are optional in JSON (missing seq = next expected, missing ts = arrival).
Every rule is applied to every form; a violation raises :class:`PayloadError` whose
``reason`` is the dead-letter reason.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from models.errors import InvalidInput

BINARY_MAGIC = b"EC"
BINARY_VERSION = 1
_HEADER = struct.Struct("<2sBBQdHH")
HEADER_SIZE = _HEADER.size
_F32_MAX = 3.4028234663852886e38
_SEQ_MAX = 2**63 - 1

#: Dead-letter reasons (stable strings: dashboards and tests key on them).
REASONS = (
    "too-large",
    "bad-encoding",
    "bad-json",
    "json-too-deep",
    "not-an-object",
    "missing-values",
    "bad-type",
    "wrong-channels",
    "too-many-samples",
    "empty",
    "non-finite",
    "bad-seq",
    "bad-ts",
    "bad-binary",
    "bad-topic",
    "no-model",
    "too-many-streams",
    "internal",
)


class PayloadError(InvalidInput):
    """A rejected payload; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.code = reason

    @property
    def reason(self) -> str:
        return self.code


class Reading:
    """A validated payload: one row (list of floats) or several rows (float32 array)."""

    __slots__ = ("rows", "seq", "ts", "values")

    def __init__(
        self, values: list[float] | np.ndarray, seq: int | None, ts: float | None, rows: int
    ) -> None:
        self.values = values
        self.seq = seq
        self.ts = ts
        self.rows = rows


def encode_binary(values: np.ndarray, seq: int, ts: float) -> bytes:
    """The binary form of ``values`` (n_samples, n_channels) ending at ``seq``/``ts``."""
    arr = np.ascontiguousarray(values, dtype="<f4")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    n, c = arr.shape
    return _HEADER.pack(BINARY_MAGIC, BINARY_VERSION, 0, seq, ts, n, c) + arr.tobytes()


def _check_row(row: object, channels: int) -> list[float]:
    if type(row) is not list:
        raise PayloadError("bad-type", "a reading must be a list of numbers")
    if len(row) != channels:
        raise PayloadError("wrong-channels", f"{len(row)} channels, model takes {channels}")
    for v in row:
        t = type(v)
        if t is not float and t is not int:
            raise PayloadError("bad-type", f"value of type {t.__name__}, expected a number")
        # One comparison catches NaN (always false), +-Inf and float32 overflow.
        if not -_F32_MAX <= v <= _F32_MAX:
            raise PayloadError("non-finite", "values must be finite float32 numbers")
    return row  # type: ignore[return-value]


def _named_row(obj: dict, names: tuple[str, ...]) -> list[float]:
    if len(obj) != len(names):
        raise PayloadError("wrong-channels", f"{len(obj)} channels, model takes {len(names)}")
    try:
        row = [obj[n] for n in names]
    except KeyError as exc:
        raise PayloadError("wrong-channels", f"missing channel {exc.args[0]!r}") from None
    return _check_row(row, len(names))


def _decode_json(payload: bytes, names: tuple[str, ...], window: int) -> Reading:
    try:
        obj = json.loads(payload.decode())  # explicit UTF-8: no BOM sniffing
    except RecursionError:
        raise PayloadError("json-too-deep", "JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise PayloadError("bad-encoding", "payload is not UTF-8") from None
    except ValueError as exc:
        raise PayloadError("bad-json", f"not JSON: {str(exc)[:80]}") from None
    if type(obj) is not dict:
        raise PayloadError("not-an-object", "payload must be a JSON object")
    values = obj.get("values")
    if values is None:
        raise PayloadError("missing-values", "payload has no 'values'")
    seq = obj.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= _SEQ_MAX):
        raise PayloadError("bad-seq", "seq must be a non-negative integer")
    ts = obj.get("ts")
    if ts is not None:
        if type(ts) is int:
            ts = float(ts)
        if type(ts) is not float or not math.isfinite(ts):
            raise PayloadError("bad-ts", "ts must be a finite number (unix seconds)")
    channels = len(names)
    tv = type(values)
    if tv is dict:
        return Reading(_named_row(values, names), seq, ts, 1)
    if tv is not list:
        raise PayloadError("bad-type", "'values' must be a list")
    if not values:
        raise PayloadError("empty", "'values' is empty")
    first = values[0]
    if type(first) is not list and type(first) is not dict:
        return Reading(_check_row(values, channels), seq, ts, 1)
    if len(values) > window:
        raise PayloadError("too-many-samples", f"{len(values)} rows, window is {window}")
    rows = [_named_row(r, names) if type(r) is dict else _check_row(r, channels) for r in values]
    if seq is not None and seq < len(rows) - 1:
        raise PayloadError("bad-seq", "seq of the last row is smaller than the row count")
    return Reading(np.asarray(rows, dtype=np.float32), seq, ts, len(rows))


def _decode_binary(payload: bytes, channels: int, window: int) -> Reading:
    if len(payload) < HEADER_SIZE:
        raise PayloadError("bad-binary", "binary payload shorter than its header")
    _, version, _flags, seq, ts, n, c = _HEADER.unpack_from(payload)
    if version != BINARY_VERSION:
        raise PayloadError("bad-binary", f"unsupported binary version {version}")
    if c != channels:
        raise PayloadError("wrong-channels", f"{c} channels, model takes {channels}")
    if n == 0:
        raise PayloadError("empty", "binary payload has no samples")
    if n > window:
        raise PayloadError("too-many-samples", f"{n} rows, window is {window}")
    if len(payload) != HEADER_SIZE + 4 * n * c:
        raise PayloadError("bad-binary", "binary payload length does not match its header")
    if seq > _SEQ_MAX or seq < n - 1:
        raise PayloadError("bad-seq", "seq out of range")
    arr = np.frombuffer(payload, dtype="<f4", offset=HEADER_SIZE).reshape(n, c)
    if not np.isfinite(arr).all():
        raise PayloadError("non-finite", "values must be finite float32 numbers")
    if math.isnan(ts):
        ts = None  # the binary form's "unknown"
    elif not math.isfinite(ts):
        # Same rule as JSON: a result with "ts": inf would be JSON no parser accepts.
        raise PayloadError("bad-ts", "ts must be a finite number (unix seconds) or NaN")
    return Reading(arr.astype(np.float32), seq, ts, n)


def decode(payload: bytes, names: tuple[str, ...], window: int, max_bytes: int) -> Reading:
    """Validate ``payload`` against the model's channel ``names`` and ``window``."""
    if len(payload) > max_bytes:
        raise PayloadError("too-large", f"{len(payload)} bytes > limit {max_bytes}")
    if payload[:2] == BINARY_MAGIC:
        return _decode_binary(payload, len(names), window)
    return _decode_json(payload, names, window)
