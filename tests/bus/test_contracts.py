"""The wire contracts of bus/ hold what the producers really send.

The agent builds result JSON from cached string pieces (for speed), so these tests feed
the real producer every output kind (a classifier, an anomaly model, non-finite rows,
an error) and hold each string to the strict :class:`bus.results.StrictResult`; the
heartbeat, dead-letter and alert models are checked the same way. That real processes
speak these contracts end to end is covered where they run: ``fleet-sim``'s collector
parses every result and heartbeat with them (tests/simulators), the gateway every
heartbeat (tests/cloud_gateway/test_edge_processes.py, test_attacks.py).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from bus.deadletters import DeadLetter, dead_letter_json
from bus.heartbeat import Heartbeat, Metrics
from bus.results import Result, StrictResult
from cloud_gateway.schemas import StatusReport
from edge_agent.output.results import (
    Outputs,
    error_output,
    model_part,
    result_json,
    stream_prefix,
)
from models.recipes.build import build_all
from models.repository import ModelRepository


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    built = build_all(tmp_path_factory.mktemp("contract-models"))
    repo = ModelRepository(built.repository, check=False)
    return {name: repo.manifest(name) for name in ("motion-edge", "vibration-anomaly")}


def _results(manifest: Any, outputs: np.ndarray, route: str = "edge") -> list[str]:
    n = outputs.shape[0]
    outs = Outputs(manifest, {manifest.postprocessing.output: outputs}, n)
    prefix = stream_prefix("site-1", "dev-7", "acc", "agent-a")
    part = model_part(manifest) if route == "edge" else model_part(manifest, ("m-cloud", None))
    return [
        result_json(
            prefix, 100 + i, 1.7e9 + i, part, o, route, "slo", 3.5, 1, 2, 0, 0.5, i % 2 == 0
        )
        for i, o in enumerate([*outs.json, error_output("timeout")])
    ]


def test_classifier_results_hold_to_the_contract(manifests: dict[str, Any]) -> None:
    m = manifests["motion-edge"]
    width = len(m.postprocessing.labels)
    rows = np.random.default_rng(0).normal(size=(3, width))
    rows[1, 0] = np.nan  # a non-finite row: label and scores null, error set
    parsed = [StrictResult.model_validate_json(r) for r in _results(m, rows)]
    assert parsed[0].output.label in m.postprocessing.labels
    assert parsed[0].output.scores is not None and len(parsed[0].output.scores) == width
    assert parsed[1].output.error == "non-finite-output" and parsed[1].output.label is None
    assert parsed[3].output.error == "timeout"
    assert [p.seq for p in parsed] == [100, 101, 102, 103]
    assert parsed[0].model == "motion-edge" and parsed[0].version == m.version
    assert parsed[0].latency_ms.total == 3.5 and parsed[0].deadline_met is True


def test_anomaly_and_cloud_results_hold_to_the_contract(manifests: dict[str, Any]) -> None:
    m = manifests["vibration-anomaly"]
    rows = np.array([[0.1], [9.0], [np.inf]])
    parsed = [StrictResult.model_validate_json(r) for r in _results(m, rows, route="cloud")]
    assert [p.output.anomaly for p in parsed[:3]] == [False, True, None]
    assert parsed[1].output.score == 9.0 and parsed[2].output.error == "non-finite-output"
    assert parsed[0].route == "cloud" and parsed[0].model == "m-cloud"
    assert parsed[0].version is None


def test_a_result_consumer_refuses_what_is_not_a_result() -> None:
    good = json.loads(_one())
    for broken in (
        {**good, "seq": "ten"},
        {**good, "route": "moon"},
        {k: v for k, v in good.items() if k != "latency_ms"},
        {**good, "output": {"label": "x", "surprise": 1}},
    ):
        with pytest.raises(ValidationError):
            Result.model_validate(broken)
    assert Result.model_validate({**good, "new_field": 1}).seq == good["seq"]  # forward
    with pytest.raises(ValidationError):
        StrictResult.model_validate({**good, "new_field": 1})  # but not from our agent


def _one() -> str:
    prefix = stream_prefix("s", "d", "acc", "a")
    output = '{"label":"Walking","scores":[0.1,0.9]}'
    return result_json(
        prefix, 9, 1.0, '"model":"m","version":2,', output, "edge", "x", 1, 0, 1, 0, 0, True
    )


def test_heartbeat_types_the_gate_inputs() -> None:
    beat = Heartbeat.model_validate(
        {
            "agent_id": "a1",
            "site": "s1",
            "models": {"m": {"version": 2, "metrics": {"p99_ms": 4.5, "results": 10}}},
            "metrics": {"p99_ms": 4.5, "results": 10, "deadline_met": 9},
            "dashboard_url": "http://127.0.0.1:1/",
        }
    )
    assert beat.models["m"].metrics.p99_ms == 4.5 and beat.metrics.deadline_met == 9
    assert beat.as_dict()["dashboard_url"] == "http://127.0.0.1:1/"  # kept, not typed
    assert "config" not in beat.as_dict()  # nothing added that the producer did not send
    for bad in ({"p99_ms": "fast"}, {"results": -1}, {"nan_outputs": 1.5}, {"error_rate": 2}):
        with pytest.raises(ValidationError):
            Heartbeat.model_validate({"agent_id": "a1", "metrics": bad})
    with pytest.raises(ValidationError):
        Metrics.model_validate({"p99_ms": math.nan})
    # The gateway's report is the same contract plus its own checks.
    report = StatusReport.model_validate(beat.as_dict() | {"update": {"state": "ok"}})
    assert isinstance(report, Heartbeat) and report.metrics.results == 10
    with pytest.raises(ValidationError):
        StatusReport.model_validate({"agent_id": "a1", "update": {"state": "bogus"}})


def test_dead_letters_carry_the_head_of_the_payload() -> None:
    payload = b"\xff" * 1000
    letter = DeadLetter.model_validate_json(
        dead_letter_json("agent-a", "sensors/s/d/acc", payload, "not-json", "x" * 500)
    )
    assert letter.reason == "not-json" and letter.payload_bytes == 1000
    assert base64.b64decode(letter.payload_b64) == payload[:256]
    assert len(letter.detail) == 300 and letter.agent == "agent-a"
