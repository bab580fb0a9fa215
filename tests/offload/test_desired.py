"""The desired-state message and the heartbeat update record (offload.desired)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from models.errors import InvalidInput
from offload.desired import Desired, UpdatePhase, UpdateState, WantedModel, parse_desired

SHA = "ab" * 32


def _message(**models: dict[str, object]) -> bytes:
    return json.dumps({"rollout_id": "r1", "models": models, "issued_at": 1700000000.5}).encode()


def test_round_trip_is_lossless_and_plain_json() -> None:
    desired = Desired(
        rollout_id="ro-1",
        models={
            "motion-edge": WantedModel(version=2, sha256=SHA, url="https://gw/api/v1/b"),
            "vibration-anomaly": WantedModel(version=1),
        },
        issued_at=1700000000.25,
    )
    data = desired.to_bytes()
    assert parse_desired(data) == desired
    assert json.loads(data) == {
        "rollout_id": "ro-1",
        "models": {
            "motion-edge": {"version": 2, "sha256": SHA, "url": "https://gw/api/v1/b"},
            "vibration-anomaly": {"version": 1, "sha256": None, "url": None},
        },
        "issued_at": 1700000000.25,
    }


def test_parses_the_gateway_contract_and_ignores_unknown_keys() -> None:
    payload = json.loads(_message(**{"motion-edge": {"version": 3, "sha256": SHA, "url": None}}))
    payload["added_later"] = {"by": "a newer gateway"}
    payload["models"]["motion-edge"]["size"] = 123
    desired = parse_desired(json.dumps(payload).encode())
    assert desired.rollout_id == "r1" and desired.issued_at == 1700000000.5
    assert desired.models["motion-edge"] == WantedModel(version=3, sha256=SHA)


def test_optional_fields_default_to_none() -> None:
    desired = parse_desired(b'{"models": {}}')
    assert (desired.rollout_id, desired.models, desired.issued_at) == (None, {}, None)


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (b"", "message"),
        (b"{not json", "message"),
        (b"[]", "message"),
        (b"{}", "models"),
        (b'{"models": []}', "models"),
        (b'{"models": {"motion-edge": {"version": "2"}}}', "models.motion-edge.version"),
        (b'{"models": {"motion-edge": {"version": true}}}', "models.motion-edge.version"),
        (b'{"models": {"motion-edge": {"version": 0}}}', "models.motion-edge.version"),
        (b'{"models": {"motion-edge": {"version": 2.5}}}', "models.motion-edge.version"),
        (b'{"models": {"motion-edge": {"version": 2, "sha256": "xyz"}}}', "sha256"),
        (b'{"models": {"motion-edge": {"version": 2, "sha256": "' + b"AB" * 32 + b'"}}}', "sha"),
        (b'{"models": {"motion-edge": {"version": 2, "url": "file:///etc/passwd"}}}', "url"),
        (b'{"models": {"../evil": {"version": 2}}}', "invalid model name"),
        (b'{"models": {}, "rollout_id": 7}', "rollout_id"),
        (b'{"models": {}, "issued_at": "yesterday"}', "issued_at"),
        (b'{"models": {}, "issued_at": -1}', "issued_at"),
    ],
)
def test_malformed_messages_are_invalid_input_naming_the_field(payload: bytes, where: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_desired(payload)
    assert info.value.reason == "invalid-input"
    assert info.value.message.startswith("bad desired state: ")
    assert where in info.value.message, info.value.message


def test_messages_are_frozen() -> None:
    desired = parse_desired(_message(**{"motion-edge": {"version": 2}}))
    with pytest.raises(ValidationError):
        desired.rollout_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        desired.models["motion-edge"].version = 5  # type: ignore[misc]


def test_update_state_defaults_to_idle_and_serialises_to_the_heartbeat_shape() -> None:
    assert UpdateState().as_dict() == {
        "rollout_id": None,
        "model": "",
        "version": 0,
        "state": "idle",
        "reason": None,
    }
    failed = UpdateState(rollout_id="r1", model="motion-edge", version=2, state="failed")
    assert failed.state is UpdatePhase.FAILED
    assert json.dumps(failed.as_dict())  # plain JSON types only
    assert failed.as_dict()["state"] == "failed"


def test_update_state_refuses_unknown_phases_and_fields() -> None:
    with pytest.raises(ValidationError):
        UpdateState(state="exploded")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        UpdateState(progress=0.5)  # type: ignore[call-arg]
