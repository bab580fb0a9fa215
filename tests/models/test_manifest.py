from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from models.manifest import Manifest
from models.repository import ModelRepository


def test_canonical_json_is_sorted_compact_and_round_trips(built) -> None:
    manifest = ModelRepository(built.repository).manifest("motion-cloud", 1)
    raw = manifest.canonical_json()
    data = json.loads(raw)
    assert raw == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert "files" in data and "signature" not in data
    assert Manifest.model_validate(data) == manifest
    assert Manifest.model_validate(data).canonical_json() == raw


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Bad Name"},
        {"version": 0},
        {"files": {"../model.onnx": "0" * 64}},
        {"files": {"model.onnx": "xyz"}},
        {"postprocessing": {"kind": "anomaly", "output": "probabilities"}},
    ],
)
def test_invalid_manifests_are_rejected(built, change: dict) -> None:
    data = ModelRepository(built.repository).manifest("motion-edge", 1).model_dump(mode="json")
    data.update(change)
    with pytest.raises(ValidationError):
        Manifest.model_validate(data)
