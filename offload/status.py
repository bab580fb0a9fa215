"""The one gRPC status table: models.errors.Status <-> grpc.StatusCode, both directions.

The server translates an :class:`~models.errors.EdgecloudError` into a gRPC status exactly
once (in the servicer); the client translates a failed call back into the same exception
tree, so callers on either side of the wire catch the same classes.
"""

from __future__ import annotations

import grpc

from models.errors import (
    Conflict,
    DeadlineExceeded,
    EdgecloudError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Status,
    Unauthenticated,
    Unavailable,
)

GRPC_STATUS: dict[Status, grpc.StatusCode] = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Status.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Status.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
}

_ERROR_FOR_CODE: dict[grpc.StatusCode, type[EdgecloudError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def grpc_code(error: EdgecloudError) -> grpc.StatusCode:
    """The gRPC status code the server answers ``error`` with."""
    return GRPC_STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def error_for_code(code: grpc.StatusCode, message: str) -> EdgecloudError:
    cls = _ERROR_FOR_CODE.get(code)
    if cls is None:
        return EdgecloudError(f"{message} ({code.name})")
    return cls(message)


def error_from_rpc(error: grpc.RpcError, context: str = "") -> EdgecloudError:
    """Map a failed call (sync or aio) into the project's exception tree."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    message = f"{context}: {details}" if context else str(details)
    if code is None:
        return Unavailable(message)
    return error_for_code(code, message)
