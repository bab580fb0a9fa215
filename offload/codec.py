"""KServe V2 tensor codec: numpy arrays <-> ``raw_*_contents`` of the Triton protobufs.

Raw little-endian bytes are the fast path both ways (``np.frombuffer``, no copies on
decode); typed ``contents`` fields are accepted on input for clients that send them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from models.errors import InvalidInput

#: Our protocol extension: a request parameter asking the server for its own time, and the
#: response parameter carrying it (microseconds from arrival to response, queue included).
TIMING_PARAM = "edgecloud_timing"
SERVER_TIME_PARAM = "edgecloud_server_us"

#: KServe V2 datatype name -> numpy dtype (little-endian, as the protocol specifies).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

_NAME_FOR_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in DATATYPES.items()}

#: Which typed ``InferTensorContents`` field carries each datatype.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of a numpy array (native byte order assumed little)."""
    name = _NAME_FOR_DTYPE.get(array.dtype.newbyteorder("<"))
    if name is None:
        raise InvalidInput(f"unsupported array dtype {array.dtype}")
    return name


def decode_tensor(
    name: str,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | memoryview | None,
    contents: object = None,
) -> np.ndarray:
    """One tensor from its raw bytes (or typed contents) with size checks and clear errors."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: negative dimension in shape {list(shape)}")
    count = 1
    for d in shape:
        count *= d
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input {name!r}: raw content is {len(raw)} bytes, but shape {list(shape)} of "
                f"{datatype} needs {expected} bytes"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = _CONTENTS_FIELD.get(datatype)
    values = getattr(contents, field) if (contents is not None and field) else ()
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: {len(values)} values in contents, shape {list(shape)} needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


@dataclass(frozen=True, slots=True)
class TensorIn:
    """One input tensor as a transport received it, not yet materialised.

    The server checks names, datatypes and shapes against the model before it decodes a
    byte (a malformed request costs no conversion); exactly one of ``raw`` (little-endian
    bytes: gRPC raw contents, HTTP binary extension), ``contents`` (gRPC typed contents)
    or ``data`` (HTTP JSON values, flat or nested) carries the values.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    contents: Any = None
    data: Any = None

    def decode(self) -> np.ndarray:
        if self.data is None:
            return decode_tensor(self.name, self.datatype, self.shape, self.raw, self.contents)
        return decode_json(self.name, self.datatype, self.shape, self.data)


def decode_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """A tensor from KServe V2 JSON ``data`` (row-major, flat or nested lists)."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    count = 1
    for d in shape:
        count *= d
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a JSON array")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: 'data' is not an array of {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: {array.size} values in data, shape {list(shape)} needs {count}"
        )
    return array.reshape(shape)


def request_tensors(request: service_pb2.ModelInferRequest) -> list[TensorIn]:
    """The inputs of a gRPC request; raw and typed contents may not be mixed."""
    raws = request.raw_input_contents
    inputs = request.inputs
    if not raws:
        return [TensorIn(t.name, t.datatype, tuple(t.shape), contents=t.contents) for t in inputs]
    if len(raws) != len(inputs):
        raise InvalidInput(
            f"{len(raws)} raw_input_contents for {len(inputs)} inputs; send one per input"
        )
    out: list[TensorIn] = []
    for tensor, raw in zip(inputs, raws, strict=True):
        # HasField first: reading .contents of a tensor without it builds an empty message.
        if tensor.HasField("contents") and tensor.contents.ByteSize() > 0:
            raise InvalidInput(
                f"input {tensor.name!r}: both raw_input_contents and typed contents given; "
                "send one of them"
            )
        out.append(TensorIn(tensor.name, tensor.datatype, tuple(tensor.shape), raw=raw))
    return out


def request_arrays(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode every input of a request (no model checks: tools and tests)."""
    out: dict[str, np.ndarray] = {}
    for tensor in request_tensors(request):
        if tensor.name in out:
            raise InvalidInput(f"input {tensor.name!r} given twice")
        out[tensor.name] = tensor.decode()
    return out


def build_request(
    model: str,
    version: int | None,
    inputs: Mapping[str, np.ndarray],
    *,
    request_id: str = "",
    outputs: Sequence[str] = (),
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw bytes."""
    request = service_pb2.ModelInferRequest(
        model_name=model, model_version="" if version is None else str(version), id=request_id
    )
    for name, array in inputs.items():
        arr = np.ascontiguousarray(array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype_of(arr)
        tensor.shape.extend(arr.shape)
        request.raw_input_contents.append(arr.tobytes())
    for name in outputs:
        request.outputs.add().name = name
    return request


def response_arrays(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode every output of a response (raw contents, as this server and Triton send)."""
    raws = response.raw_output_contents
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        raw = raws[i] if i < len(raws) else None
        out[tensor.name] = decode_tensor(
            tensor.name, tensor.datatype, tensor.shape, raw, None if raw else tensor.contents
        )
    return out
