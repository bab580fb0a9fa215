"""The signed desired-state contract (bus.desired) and the heartbeat update record."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from bus.desired import (
    Desired,
    SignedDesired,
    UpdatePhase,
    UpdateState,
    WantedModel,
    parse_desired,
    sign_desired,
    verify_desired,
)
from models.errors import BadSignature, InvalidInput, UnknownSigner
from models.signing import key_id

SHA = "ab" * 32
KEY = Ed25519PrivateKey.generate()
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}


def _doc(**models: dict[str, object]) -> dict[str, object]:
    return {
        "target": "edge-1",
        "target_kind": "agent",
        "sequence": 7,
        "rollout_id": "r1",
        "models": models,
        "issued_at": 1700000000.5,
    }


def test_signed_round_trip_is_lossless_and_plain_json() -> None:
    desired = Desired(
        target="edge-1",
        sequence=3,
        rollout_id="ro-1",
        models={
            "motion-edge": WantedModel(version=2, sha256=SHA, url="https://gw/api/v1/b"),
            "vibration-anomaly": WantedModel(
                version=1, rollback=True, topics="sensors/s1/+/vib", state="absent"
            ),
        },
        issued_at=1700000000.25,
    )
    payload = sign_desired(desired, KEY)
    assert verify_desired(payload, TRUSTED) == desired
    envelope = json.loads(payload)
    assert set(envelope) == {"document", "key_id", "signature"}
    assert json.loads(envelope["document"])["models"]["motion-edge"] == {
        "version": 2,
        "sha256": SHA,
        "url": "https://gw/api/v1/b",
        "rollback": False,
        "topics": None,
        "state": "serving",
    }


def test_unknown_keys_are_ignored_and_defaults_apply() -> None:
    doc = _doc(**{"motion-edge": {"version": 3, "sha256": SHA, "url": None, "size": 1}})
    doc["added_later"] = {"by": "a newer gateway"}
    desired = parse_desired(json.dumps(doc))
    assert desired.models["motion-edge"] == WantedModel(version=3, sha256=SHA)
    assert desired.models["motion-edge"].state == "serving"
    assert desired.models["motion-edge"].rollback is False


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{not json",
        b"[]",
        # The attack of issue 16: a plain (unsigned) desired-state message.
        json.dumps({"models": {"motion-edge": {"version": 1, "sha256": None, "url": None}}}),
        json.dumps({"document": "{}", "key_id": "x"}),
    ],
)
def test_unsigned_or_malformed_envelopes_are_refused(payload: bytes | str) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    with pytest.raises(InvalidInput) as info:
        verify_desired(data, TRUSTED)
    assert info.value.message.startswith("unsigned or malformed desired state")


def test_a_document_signed_by_another_key_is_an_unknown_signer() -> None:
    other = Ed25519PrivateKey.generate()
    payload = sign_desired(parse_desired(json.dumps(_doc())), other)
    with pytest.raises(UnknownSigner) as info:
        verify_desired(payload, TRUSTED)
    assert "not the gateway key" in info.value.message


def test_a_tampered_document_fails_the_signature() -> None:
    envelope = json.loads(sign_desired(parse_desired(json.dumps(_doc())), KEY))
    doc = json.loads(envelope["document"])
    doc["sequence"] = 99
    envelope["document"] = json.dumps(doc)
    with pytest.raises(BadSignature):
        verify_desired(json.dumps(envelope).encode(), TRUSTED)
    envelope["signature"] = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(BadSignature):
        verify_desired(json.dumps(envelope).encode(), TRUSTED)


def test_a_signed_but_invalid_document_is_invalid_input() -> None:
    text = json.dumps(_doc(**{"motion-edge": {"version": 0}}))
    sig = SignedDesired(
        document=text,
        key_id=key_id(KEY.public_key()),
        signature=base64.b64encode(KEY.sign(text.encode())).decode(),
    )
    with pytest.raises(InvalidInput) as info:
        verify_desired(sig.to_bytes(), TRUSTED)
    assert "models.motion-edge.version" in info.value.message


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"models": []}, "models"),
        ({"target": "a/b"}, "target"),
        ({"target": "+"}, "target"),
        ({"target_kind": "fleet"}, "target_kind"),
        ({"sequence": 0}, "sequence"),
        ({"sequence": 2**63}, "sequence"),
        ({"sequence": "5"}, "sequence"),
        ({"models": {"m": {"version": "2"}}}, "models.m.version"),
        ({"models": {"m": {"version": True}}}, "models.m.version"),
        ({"models": {"m": {"version": 2**31}}}, "models.m.version"),
        ({"models": {"m": {"version": 2.5}}}, "models.m.version"),
        ({"models": {"m": {"version": 2, "sha256": "AB" * 32}}}, "sha256"),
        ({"models": {"m": {"version": 2, "url": "file:///etc/passwd"}}}, "url"),
        ({"models": {"m": {"version": 2, "rollback": "yes"}}}, "rollback"),
        ({"models": {"m": {"version": 2, "state": "deleted"}}}, "state"),
        ({"models": {"../evil": {"version": 2}}}, "invalid model name"),
        ({"rollout_id": 7}, "rollout_id"),
        ({"issued_at": -1}, "issued_at"),
    ],
)
def test_malformed_documents_are_invalid_input_naming_the_field(
    change: dict[str, object], where: str
) -> None:
    doc = _doc() | change
    with pytest.raises(InvalidInput) as info:
        parse_desired(json.dumps(doc))
    assert info.value.message.startswith("bad desired state: ")
    assert where in info.value.message, info.value.message


def test_messages_are_frozen() -> None:
    desired = parse_desired(json.dumps(_doc(**{"motion-edge": {"version": 2}})))
    with pytest.raises(ValidationError):
        desired.sequence = 8  # type: ignore[misc]
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
