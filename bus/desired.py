"""The model-update contract between the gateway and its agents, in one place.

The retained message on ``fleet/{agent}/desired`` (or ``fleet/{site}/desired``) is a
:class:`SignedDesired` envelope: the exact bytes of a :class:`Desired` document plus the
gateway's ed25519 signature over them (``models.signing``)::

    {"document": "<Desired as JSON text>", "key_id": "<16 hex>", "signature": "<base64>"}

    Desired = {"target": "edge-1", "target_kind": "agent"|"site", "sequence": 42,
               "rollout_id": str|null, "issued_at": unix_s,
               "models": {"<name>": {"version": int, "sha256": hex|null, "url": str|null,
                                     "rollback": bool, "topics": str|null,
                                     "state": "serving"|"absent"}}}

The signature covers the document text as sent (no re-serialisation on either side), so
an agent verifies exactly what the gateway signed. ``sequence`` comes from one counter the
gateway persists and increases with every document it signs; an agent refuses a document
whose sequence is not newer than the last one it accepted for the same target (replay of
an old, validly signed state). ``rollback`` marks a version older than the agent's active
one as an intended downgrade; without it agents refuse to go back. ``sha256``/``url`` are
null only for a rollback to a version the registry no longer holds (agents keep their
last versions locally). ``topics`` is the MQTT filter the model is bound to on the agent
(null: unchanged or the agent's default); ``state: absent`` removes the model.

``UpdateState`` is what the agent reports back in the heartbeat's ``update`` field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from models.errors import BadSignature, InvalidInput, UnknownSigner
from models.manifest import validate_model_name
from models.signing import TrustedKeys, sign, verify

#: Versions and sequence numbers are SQLite INTEGERs: bound them where they enter.
MAX_INT = 2**63 - 1
MAX_VERSION = 2**31 - 1


class _Message(BaseModel):
    # Unknown keys are ignored so a newer gateway can add fields without older agents
    # refusing every update; the known ones are strict.
    model_config = ConfigDict(frozen=True, extra="ignore")


class WantedModel(_Message):
    """One model the agent should run, and where to fetch it if it is not installed."""

    version: StrictInt = Field(ge=1, le=MAX_VERSION)
    sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    url: StrictStr | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    rollback: StrictBool = Field(
        default=False, description="an intended downgrade below the agent's active version"
    )
    topics: StrictStr | None = Field(
        default=None,
        max_length=1024,
        description="MQTT topic filter the model is bound to (null: unchanged/default)",
    )
    state: Literal["serving", "absent"] = "serving"


class Desired(_Message):
    """The desired-state document of one agent or one site (what the gateway signs)."""

    target: StrictStr = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    target_kind: Literal["agent", "site"] = "agent"
    sequence: StrictInt = Field(ge=1, le=MAX_INT)
    rollout_id: StrictStr | None = Field(default=None, max_length=128)
    models: dict[str, WantedModel]
    issued_at: StrictFloat | None = Field(default=None, ge=0)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, WantedModel]) -> dict[str, WantedModel]:
        # Names become directory names in the agent's repository.
        for name in v:
            validate_model_name(name)
        return v

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SignedDesired(_Message):
    """The wire envelope: the document text and the gateway's signature over it."""

    document: StrictStr = Field(max_length=1 << 20)
    key_id: StrictStr = Field(max_length=64)
    signature: StrictStr = Field(max_length=256)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def _invalid(exc: ValidationError, what: str) -> InvalidInput:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "message"
    return InvalidInput(f"bad {what}: {where}: {err['msg']}")


def sign_desired(desired: Desired, key: Ed25519PrivateKey) -> bytes:
    """The retained message for ``desired``, signed with the gateway's key."""
    text = desired.model_dump_json()
    sig = sign(key, text.encode())
    return SignedDesired(document=text, **sig).to_bytes()


def verify_desired(payload: bytes, trusted: TrustedKeys) -> Desired:
    """Check the envelope's signature against ``trusted``, then parse the document.

    Raises InvalidInput (malformed or unsigned), UnknownSigner or BadSignature; the
    document is never looked at before its signature verifies.
    """
    try:
        envelope = SignedDesired.model_validate_json(payload)
    except ValidationError as exc:
        raise InvalidInput(
            "unsigned or malformed desired state (expected a gateway-signed envelope: "
            f"{_invalid(exc, 'envelope').message})"
        ) from None
    sig = {"key_id": envelope.key_id, "signature": envelope.signature}
    try:
        verify(sig, envelope.document.encode(), trusted)
    except UnknownSigner:
        raise UnknownSigner(
            f"desired state signed by key {envelope.key_id!r}, which is not the gateway key"
        ) from None
    except BadSignature:
        raise BadSignature(
            f"desired state signature by key {envelope.key_id} does not verify"
        ) from None
    try:
        return Desired.model_validate_json(envelope.document)
    except ValidationError as exc:
        raise _invalid(exc, "desired state") from None


def parse_desired(document: bytes | str) -> Desired:
    """Validate a desired-state document (no signature check); malformed is InvalidInput."""
    try:
        return Desired.model_validate_json(document)
    except ValidationError as exc:
        raise _invalid(exc, "desired state") from None


class UpdatePhase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SWAPPING = "swapping"
    OK = "ok"
    FAILED = "failed"


class UpdateState(BaseModel):
    """The heartbeat ``update`` field: where the agent is with its latest desired model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rollout_id: str | None = None
    model: str = ""
    version: int = 0
    state: UpdatePhase = UpdatePhase.IDLE
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
