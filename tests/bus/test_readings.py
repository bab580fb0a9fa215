"""Payload validation: the same rules for JSON readings, JSON windows and binary frames."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from bus.readings import HEADER_SIZE, PayloadError, decode, encode_binary

NAMES = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
W = 100
LIMIT = 65536


def _dec(payload: bytes):
    return decode(payload, NAMES, W, LIMIT)


def _reason(payload: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        _dec(payload)
    return info.value.reason


def test_json_single_reading() -> None:
    r = _dec(b'{"ts": 1.5, "seq": 7, "values": [1, 2.5, 3, 4, 5, 6]}')
    assert (r.seq, r.ts, r.rows) == (7, 1.5, 1)
    assert r.values == [1, 2.5, 3, 4, 5, 6]


def test_json_named_channels_are_reordered() -> None:
    vals = {n: float(i) for i, n in enumerate(reversed(NAMES))}
    r = _dec(json.dumps({"seq": 1, "values": vals}).encode())
    assert r.values == [vals[n] for n in NAMES]


def test_json_window_and_binary_agree() -> None:
    x = np.arange(W * 6, dtype=np.float32).reshape(W, 6) / 7
    j = _dec(json.dumps({"ts": 2.0, "seq": 199, "values": x.tolist()}).encode())
    b = _dec(encode_binary(x, 199, 2.0))
    assert j.rows == b.rows == W and j.seq == b.seq == 199 and j.ts == b.ts == 2.0
    np.testing.assert_array_equal(j.values, b.values)


def test_missing_seq_and_ts_are_optional() -> None:
    r = _dec(b'{"values": [0, 0, 0, 0, 0, 0]}')
    assert r.seq is None and r.ts is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00garbage", "bad-encoding"),
        (b"{not json", "bad-json"),
        (b"[" * 50000 + b"]" * 50000, "too-large"),
        (b"[" * 30000 + b"]" * 30000, "json-too-deep"),
        (b"[1, 2, 3]", "not-an-object"),
        (b'{"seq": 1}', "missing-values"),
        (b'{"values": "abc"}', "bad-type"),
        (b'{"values": [1, 2, 3, "4", 5, 6]}', "bad-type"),
        (b'{"values": [1, 2, 3, true, 5, 6]}', "bad-type"),
        (b'{"values": [1, 2, 3]}', "wrong-channels"),
        (b'{"values": [1, 2, 3, NaN, 5, 6]}', "non-finite"),
        (b'{"values": [1, 2, 3, Infinity, 5, 6]}', "non-finite"),
        (b'{"values": [1, 2, 3, 1e39, 5, 6]}', "non-finite"),
        (b'{"values": []}', "empty"),
        (b'{"seq": -1, "values": [1, 2, 3, 4, 5, 6]}', "bad-seq"),
        (b'{"seq": 1.5, "values": [1, 2, 3, 4, 5, 6]}', "bad-seq"),
        (b'{"ts": "now", "values": [1, 2, 3, 4, 5, 6]}', "bad-ts"),
        (b'{"values": {"acc_x": 1}}', "wrong-channels"),
        (b'{"values": [[1, 2, 3, 4, 5, 6], [1, 2]]}', "wrong-channels"),
        (b'{"values": [[1, 2, 3, 4, 5, 6], 7]}', "bad-type"),
    ],
)
def test_json_rejections(payload: bytes, reason: str) -> None:
    assert _reason(payload) == reason


def test_too_many_rows() -> None:
    rows = [[0.0] * 6] * (W + 1)
    assert _reason(json.dumps({"seq": 500, "values": rows}).encode()) == "too-many-samples"
    assert _reason(encode_binary(np.zeros((W + 1, 6)), 500, 0.0)) == "too-many-samples"


def test_binary_rejections() -> None:
    good = encode_binary(np.ones((2, 6)), 5, 1.0)
    assert _reason(good[:10]) == "bad-binary"
    assert _reason(good[:-4]) == "bad-binary"
    bad_version = good[:2] + b"\x09" + good[3:]
    assert _reason(bad_version) == "bad-binary"
    assert _reason(encode_binary(np.ones((2, 3)), 5, 1.0)) == "wrong-channels"
    nan = np.ones((2, 6), dtype=np.float32)
    nan[1, 3] = np.nan
    assert _reason(encode_binary(nan, 5, 1.0)) == "non-finite"
    empty = struct.pack("<2sBBQdHH", b"EC", 1, 0, 5, 1.0, 0, 6)
    assert len(empty) == HEADER_SIZE
    assert _reason(empty) == "empty"


@pytest.mark.parametrize("ts", [float("inf"), float("-inf")])
def test_binary_ts_must_be_finite_like_json(ts: float) -> None:
    """Issue 16 item 10: a result with "ts": inf would be JSON no parser accepts."""
    payload = encode_binary(np.ones((1, 6)), 5, ts)
    assert _reason(payload) == "bad-ts"
    assert _reason(json.dumps({"ts": ts, "seq": 5, "values": [1.0] * 6}).encode()) == "bad-ts"
    assert _dec(encode_binary(np.ones((1, 6)), 5, float("nan"))).ts is None  # NaN: unknown
