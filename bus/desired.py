"""The model-update contract between the gateway and its agents, in one place.

The retained message on ``fleet/{agent}/desired`` (or ``fleet/{site}/desired``) is a
:class:`SignedDesired` envelope: the exact bytes of a :class:`Desired` document plus the
gateway's ed25519 signature over them (``models.signing``)::

    {"document": "<Desired as JSON text>", "key_id": "<16 hex>", "signature": "<base64>"}

    Desired = {"target": "edge-1", "target_kind": "agent"|"site", "sequence": 42,
               "rollout_id": str|null, "issued_at": unix_s,
               "models": {"<name>": {"version": int, "sha256": hex|null, "url": str|null,
                                     "rollback": bool, "topics": str|null,
                                     "state": "serving"|"absent"}},
               "config": {"version": int, "rollout_id": str|null,
                          "values": {"<live setting>": value}} | null}

The signature covers the document text as sent (no re-serialisation on either side), so
an agent verifies exactly what the gateway signed. ``sequence`` comes from one counter the
gateway persists and increases with every document it signs; an agent refuses a document
whose sequence is not newer than the last one it accepted for the same target (replay of
an old, validly signed state). ``rollback`` marks a version older than the agent's active
one as an intended downgrade; without it agents refuse to go back. ``sha256``/``url`` are
null only for a rollback to a version the registry no longer holds (agents keep their
last versions locally). ``topics`` is the MQTT filter the model is bound to on the agent
(null: unchanged or the agent's default); ``state: absent`` removes the model.

``config`` is the configuration twin (docs/architecture.md, "Configuration twin"): the
live settings (:data:`LIVE_SETTINGS`) the agent runs with instead of its flags. It is part
of the signed document, so the signature and the sequence check cover it. ``values``
holds only the overrides: a setting absent from it falls back to the agent's flag, and
``config: null`` in an agent's own document means "flags only". The agent validates the
values with its own settings model (one bad value refuses the whole section) and reports
the outcome in the heartbeat's ``config`` field (:class:`ConfigReport`).

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


#: Edge settings the configuration twin may change while the agent runs (the rest need a
#: restart: docs/architecture.md explains each). The gateway refuses other names; the
#: agent validates the values with ``EdgeSettings``, the same model as its flags.
LIVE_SETTINGS: tuple[str, ...] = (
    "policy",
    "slo_ms",
    "pressure_limit",
    "cascade_min_confidence",
    "anomaly_threshold",
    "max_wait_ms",
    "inline_max_ms",
    "heartbeat_s",
)


class WantedConfig(_Message):
    """The configuration twin's desired section: overrides of live settings.

    The values are not judged here: a document whose config an agent cannot take must
    still deliver its models, so the agent's twin checks them (:func:`check_live` and its
    settings model) and refuses the config section alone."""

    version: StrictInt = Field(ge=1, le=MAX_INT)
    rollout_id: StrictStr | None = Field(default=None, max_length=128)
    values: dict[str, Any] = Field(default_factory=dict, max_length=64)


def check_live(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` if every name is a live setting and every value a short JSON scalar;
    else InvalidInput naming the first offender (gateway requests and agents alike)."""
    unknown = sorted(set(values) - set(LIVE_SETTINGS))
    if unknown:
        raise InvalidInput(
            f"{unknown[0][:64]!r} is not a live setting (live: {', '.join(LIVE_SETTINGS)}; "
            "the others need a restart with new flags)"
        )
    for name, value in values.items():
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidInput(f"{name}: a setting's value must be a JSON scalar")
        if isinstance(value, str) and len(value) > 256:
            raise InvalidInput(f"{name}: value longer than 256 characters")
    return values


class ConfigReport(BaseModel):
    """The heartbeat ``config`` field: the twin's state on the agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(default=0, description="last config version applied (0: flags only)")
    rollout_id: str | None = None
    state: Literal["ok", "failed"] = "ok"
    reason: str | None = Field(default=None, description="why the last document was refused")
    refused_version: int | None = Field(default=None, description="the refused version")
    effective: dict[str, Any] = Field(
        default_factory=dict, description="live settings in force (flags + twin)"
    )
    overrides: list[str] = Field(default_factory=list, description="settings set by the twin")
    refusals: int = Field(default=0, description="config sections refused since the start")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Desired(_Message):
    """The desired-state document of one agent or one site (what the gateway signs)."""

    target: StrictStr = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    target_kind: Literal["agent", "site"] = "agent"
    sequence: StrictInt = Field(ge=1, le=MAX_INT)
    rollout_id: StrictStr | None = Field(default=None, max_length=128)
    models: dict[str, WantedModel]
    issued_at: StrictFloat | None = Field(default=None, ge=0)
    config: WantedConfig | None = None

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
