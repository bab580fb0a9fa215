"""Tensor codec round trips and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InvalidInput
from offload.codec import build_request, datatype_of, decode_tensor, request_arrays


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]
)
def test_round_trip_every_dtype(dtype: type) -> None:
    x = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    back = request_arrays(build_request("m", 2, {"x": x}))["x"]
    assert back.dtype == x.dtype and back.shape == x.shape
    np.testing.assert_array_equal(back, x)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    x = np.arange(4, dtype=">f4")
    assert datatype_of(x) == "FP32"
    np.testing.assert_array_equal(request_arrays(build_request("m", None, {"x": x}))["x"], x)


def test_refusals_are_specific() -> None:
    with pytest.raises(InvalidInput, match="unsupported datatype 'BYTES'"):
        decode_tensor("x", "BYTES", [1], b"a")
    with pytest.raises(InvalidInput, match="negative dimension"):
        decode_tensor("x", "FP32", [-1, 4], b"")
    with pytest.raises(InvalidInput, match="raw content is 3 bytes"):
        decode_tensor("x", "FP32", [1], b"abc")
    request = build_request("m", 1, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    del request.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="1 raw_input_contents for 2 inputs"):
        request_arrays(request)
