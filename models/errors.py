"""The one exception root of edgecloud and its status vocabulary.

Every package raises subclasses of :class:`EdgecloudError`. Boundaries translate the
``status`` once: the gRPC servicer through a status table in ``offload``, the HTTP
handlers through one middleware in each aiohttp app, MQTT ingest into a dead-letter
reason. Third-party errors are mapped at the point they are caught, never leaked.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Transport-neutral error kinds (names follow gRPC's canonical codes)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class EdgecloudError(Exception):
    """Root of every error edgecloud raises on purpose."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str, *, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    @property
    def reason(self) -> str:
        """A short machine-readable reason: the class name in kebab case."""
        name = type(self).__name__
        out = [name[0].lower()]
        for ch in name[1:]:
            out.append(f"-{ch.lower()}" if ch.isupper() else ch)
        return "".join(out)

    def to_dict(self) -> dict[str, str]:
        return {"error": self.reason, "status": self.status.value, "message": self.message}


class InvalidInput(EdgecloudError):
    status = Status.INVALID_ARGUMENT


class ConfigError(EdgecloudError):
    status = Status.INVALID_ARGUMENT


class NotFound(EdgecloudError):
    status = Status.NOT_FOUND


class Conflict(EdgecloudError):
    status = Status.FAILED_PRECONDITION


class Unauthenticated(EdgecloudError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(EdgecloudError):
    status = Status.PERMISSION_DENIED


class Overloaded(EdgecloudError):
    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(EdgecloudError):
    status = Status.DEADLINE_EXCEEDED


class Unavailable(EdgecloudError):
    status = Status.UNAVAILABLE


class BackendError(EdgecloudError):
    """A backend failed to load or run a model."""

    status = Status.INTERNAL


class MissingDependency(EdgecloudError):
    """An optional heavy dependency (TensorRT, jetson-stats) is not installed."""

    status = Status.FAILED_PRECONDITION

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'edgecloud[{extra}]'"
        )
        self.package = package
        self.extra = extra


class BundleError(InvalidInput):
    """A model bundle failed verification; subclasses name the exact check."""


class CorruptBundle(BundleError):
    """The bundle is not a readable archive, or a required file is missing or malformed."""


class HashMismatch(BundleError):
    """A file's sha256 differs from the manifest, or a file is not covered by it."""


class BadSignature(BundleError):
    """The signature does not verify against the manifest with the signer's key."""


class UnknownSigner(BundleError):
    """The bundle was signed by a key that is not in the trusted set."""


class UnsafeArchive(BundleError):
    """An archive member is a link, device, absolute path, or escapes with ``..``."""


class BundleTooLarge(BundleError):
    """The bundle, or its unpacked content, exceeds the size limit."""


class SpecMismatch(BundleError):
    """Manifest inputs/outputs disagree with the ONNX graph's names, dtypes or shapes."""


class UnservableModel(BundleError):
    """The model's input is not a shape an edge agent can feed (see models.servable)."""


class TestVectorMismatch(BundleError):
    """The model does not reproduce the bundle's test vectors within tolerance."""

    __test__ = False  # not a pytest test class despite the name
