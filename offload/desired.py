"""The model-update contract between the gateway and its agents, in one place.

``Desired`` is the retained message on ``fleet/{agent}/desired``: every model the
gateway wants on that agent::

    {"rollout_id": str|null, "issued_at": unix_s,
     "models": {"<name>": {"version": int, "sha256": hex|null, "url": str|null}}}

``sha256``/``url`` are null only for a rollback to a version the registry no longer
holds (agents keep their last versions locally). The gateway publishes it with
:meth:`Desired.to_bytes`, the agent reads it with :func:`parse_desired`.

``UpdateState`` is what the agent reports back in the heartbeat's ``update`` field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from models.errors import InvalidInput
from models.manifest import validate_model_name


class _Message(BaseModel):
    # Unknown keys are ignored so a newer gateway can add fields without older agents
    # refusing every update; the known ones are strict.
    model_config = ConfigDict(frozen=True, extra="ignore")


class WantedModel(_Message):
    """One model the agent should run, and where to fetch it if it is not installed."""

    version: StrictInt = Field(ge=1)
    sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    url: StrictStr | None = Field(default=None, pattern=r"^https?://")


class Desired(_Message):
    """The retained desired-state message of one agent."""

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


def parse_desired(payload: bytes) -> Desired:
    """Validate a desired-state message; anything malformed is InvalidInput."""
    try:
        return Desired.model_validate_json(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        raise InvalidInput(f"bad desired state: {where}: {err['msg']}") from None


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
