"""Cascade policy end to end: real mosquitto, a real offload-server serving the cloud model,
a real ``edge-agent --policy cascade`` process, results checked against direct ORT runs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import basicmotions
from models.backends import load_backend
from tests.conftest import free_port
from tests.edge_agent.conftest import (
    AgentProcess,
    OffloadServer,
    agent_settings,
    process_args,
    publisher,
)

ESCALATED = "escalated-low-confidence"
KEPT = "low-confidence-kept"
# With seconds of slack only a stalled machine sends a batch to the cloud model directly.
DIRECT_CLOUD = {"local-late-remote-fits", "remote-tail-risk", "both-near-deadline"}


@pytest.fixture(scope="module")
def cloud(built_models: Any) -> Iterator[OffloadServer]:
    server = OffloadServer(built_models.repository)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def windows(built_models: Any) -> dict[str, np.ndarray]:
    """The test windows and both models' direct ORT outputs on them."""
    x, _ = basicmotions.load("test")
    x = np.ascontiguousarray(x, dtype=np.float32)
    repo = built_models.repository
    out = {"x": x}
    for name in ("motion-edge", "motion-cloud"):
        backend = load_backend(repo / name / "1" / "model.onnx")
        out[name] = backend.infer({"input": x})["probabilities"]
        backend.close()
    return out


def _run(
    mosquitto: Any, repo: Path, prefix: str, subscriber: Any, x: np.ndarray, *flags: str
) -> tuple[dict[int, dict[str, Any]], dict[str, Any], str]:
    """Each window as a whole-window message from its own device; results by device."""
    results = subscriber(f"{prefix}/results/#", qos=1)
    agent = AgentProcess(
        process_args(
            f"{prefix}-agent",
            mosquitto.url,
            repo,
            prefix,
            *("--log-level", "WARNING", "--model", "motion-edge", "--policy", "cascade"),
            # The machine's other load must not decide the route (node-pressure rule).
            *("--slo-ms", "3000", "--pressure-limit", "1.1", *flags),
        )
    )
    try:
        agent.wait_ready()
        pub = publisher(mosquitto.url)
        try:
            # One burst, so that batches mix confident and low-confidence rows.
            bodies = [json.dumps({"ts": time.time(), "seq": 99, "values": w.tolist()}) for w in x]
            sent = [pub.publish(f"{prefix}/sensors/s/d{i}/w", b, 1) for i, b in enumerate(bodies)]
            for info in sent:
                info.wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()
        got = results.wait_for(len(x), timeout=20)
        time.sleep(0.5)  # anything published twice would arrive now
        got = results.json()
        status = agent.status()
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        agent.stop()
    devices = [int(r["device"][1:]) for r in got]
    assert sorted(devices) == list(range(len(x))), "every request ends with exactly one result"
    return {int(r["device"][1:]): r for r in got}, status, metrics


def _scores(r: dict[str, Any]) -> np.ndarray:
    return np.asarray(r["output"]["scores"], dtype=np.float64)


def _counter(metrics: str, outcome: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "edge_cascade_escalations_total"
        and sample.labels.get("outcome") == outcome
    )


def _check(res: dict[int, dict[str, Any]], w: dict[str, np.ndarray], thr: float) -> dict[str, int]:
    """Each result is the right model's answer for its route and reason; counts by kind."""
    edge, cloud = w["motion-edge"], w["motion-cloud"]
    counts = {"escalated": 0, "confident": 0, "kept": 0, "direct": 0, "fallback": 0}
    for i, r in res.items():
        # Results name the model that answered: the cloud's for cloud answers.
        assert (r["model"], r["version"]) == (
            ("motion-cloud", 1) if r["route"] == "cloud" else ("motion-edge", 1)
        ), r
        if r["reason"] == ESCALATED:
            assert r["route"] == "cloud" and edge[i].max() < thr, r
            np.testing.assert_allclose(_scores(r), cloud[i], rtol=1e-5, atol=1e-6)
            counts["escalated"] += 1
        elif r["route"] == "cloud":
            assert r["reason"] in DIRECT_CLOUD, r
            np.testing.assert_allclose(_scores(r), cloud[i], rtol=1e-5, atol=1e-6)
            counts["direct"] += 1
        else:
            np.testing.assert_allclose(_scores(r), edge[i], rtol=1e-5, atol=1e-6)
            if r["reason"].startswith("fallback:"):  # routed to a failing cloud directly
                counts["fallback"] += 1
                continue
            kept = r["reason"].startswith(f"{KEPT}:")
            assert kept == (edge[i].max() < thr), r
            counts["kept" if kept else "confident"] += 1
    return counts


def test_low_min_confidence_escalates_nothing(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, cloud: Any, windows: Any
) -> None:
    res, st, _ = _run(
        mosquitto,
        repo,
        topic_prefix,
        subscriber,
        windows["x"],
        *("--cloud", cloud.target, "--cloud-model", "motion-cloud"),
        *("--cascade-min-confidence", "0.0"),
    )
    counts = _check(res, windows, 0.0)
    assert counts["escalated"] == counts["kept"] == 0, counts
    assert counts["confident"] + counts["direct"] == len(windows["x"])
    assert st["totals"]["escalated"] == st["totals"]["low_confidence_kept"] == 0
    assert st["policy"] == "cascade"


def test_everything_low_confidence_is_answered_by_the_cloud_model(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, cloud: Any, windows: Any
) -> None:
    res, st, metrics = _run(
        mosquitto,
        repo,
        topic_prefix,
        subscriber,
        windows["x"],
        *("--cloud", cloud.target, "--cloud-model", "motion-cloud"),
        *("--cascade-min-confidence", "1.01"),
    )
    counts = _check(res, windows, 1.01)
    assert counts["escalated"] == len(res), counts  # every answer is the cloud model's
    labels = ["Standing", "Running", "Walking", "Badminton"]
    for i, r in res.items():
        assert r["output"]["label"] == labels[int(np.argmax(windows["motion-cloud"][i]))]
    assert st["totals"]["escalated"] == counts["escalated"]
    assert st["totals"]["low_confidence_kept"] == 0
    assert _counter(metrics, "escalated") == counts["escalated"]


def test_mixed_confidence_splits_batches(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, cloud: Any, windows: Any
) -> None:
    thr = 0.9  # about a third of the BasicMotions test windows are below it on the edge
    low = int((windows["motion-edge"].max(axis=1) < thr).sum())
    assert 0 < low < len(windows["x"])
    res, st, _ = _run(
        mosquitto,
        repo,
        topic_prefix,
        subscriber,
        windows["x"],
        *("--cloud", cloud.target, "--cloud-model", "motion-cloud"),
        *("--cascade-min-confidence", str(thr), "--max-batch", "8"),
    )
    counts = _check(res, windows, thr)
    assert counts["kept"] == 0, counts  # a healthy cloud with seconds of slack
    assert counts["confident"] > 0 and counts["escalated"] > 0, counts
    # Per row (_check): confident rows are the edge's answer, every low one the cloud's.
    assert counts["escalated"] == low or counts["direct"] > 0, (low, counts)
    assert st["totals"]["escalated"] == counts["escalated"]


def test_unreachable_or_failing_cloud_keeps_every_edge_answer(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, cloud: Any, windows: Any
) -> None:
    n = len(windows["x"])
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    cases = {
        "dead": ("--cloud", dead, "--cloud-model", "motion-cloud"),
        # Reachable, but the cloud refuses: the escalation call itself fails.
        "missing": ("--cloud", cloud.target, "--cloud-model", "no-such-model"),
    }
    for name, flags in cases.items():
        res, st, metrics = _run(
            mosquitto,
            repo,
            f"{topic_prefix}{name}",
            subscriber,
            windows["x"],
            *flags,
            *("--cascade-min-confidence", "1.01"),
        )
        counts = _check(res, windows, 1.01)
        assert counts["kept"] + counts["fallback"] == n and counts["kept"] > 0, (name, counts)
        assert st["totals"]["low_confidence_kept"] == counts["kept"]
        assert st["totals"]["escalated"] == 0
        assert _counter(metrics, "kept") == counts["kept"]
        reasons = {r["reason"] for r in res.values()}
        if name == "missing":
            assert f"{KEPT}:not-found" in reasons, reasons


async def test_anomaly_models_and_a_missing_cloud_are_never_escalated(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, cloud: Any, make_agent: Any
) -> None:
    """Anomaly scores carry no confidence; without --cloud low rows keep the edge answer."""
    rng = np.random.default_rng(3)
    cases = {
        "anomaly": ("vibration-anomaly", cloud.target, rng.normal(size=(5, 256, 3))),
        "nocloud": ("motion-edge", None, rng.normal(size=(5, 100, 6))),
    }
    for name, (model, target, x) in cases.items():
        prefix = f"{topic_prefix}{name}"
        results = subscriber(f"{prefix}/results/#", qos=1)
        agent = await make_agent(
            agent_settings(
                mosquitto.url,
                repo,
                prefix,
                model=model,
                policy="cascade",
                cloud=target,
                cloud_model=model if target else None,
                cascade_min_confidence=1.01,
                pressure_limit=1.1,
                slo_ms=3000,
            )
        )
        pub = publisher(mosquitto.url)
        for i, w in enumerate(x):
            body = json.dumps({"ts": time.time(), "seq": w.shape[0] - 1, "values": w.tolist()})
            pub.publish(f"{prefix}/sensors/s/d{i}/w", body, 1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        await asyncio.to_thread(results.wait_for, len(x), 10.0)
        await asyncio.sleep(0.3)
        got = results.json()
        assert sorted(r["device"] for r in got) == [f"d{i}" for i in range(len(x))], got
        assert {r["route"] for r in got} == {"edge"}
        reasons = {r["reason"] for r in got}
        if name == "anomaly":
            assert reasons == {"edge-first"}, reasons
            assert agent.stats.low_confidence_kept == 0
        else:
            assert reasons == {f"{KEPT}:no-remote"}, reasons
            assert agent.stats.low_confidence_kept == len(x)
        assert agent.stats.escalated == 0
        assert agent.dispatcher.cascade is not None and agent.dispatcher.idle


def test_fleet_sim_compare_runs_cascade_load_aware(tmp_path: Path) -> None:
    """The agents `fleet-sim compare` starts for cascade get a real, load-aware cascade."""
    from edge_agent.app.cli import settings_from_args
    from edge_agent.app.pipeline import policy_params
    from edge_agent.routing.policy import Cascade, Observed, Route, make_policy
    from simulators.scenario import load_scenario
    from simulators.stack import Stack

    sc = load_scenario("compare")
    spec = sc.stack.model_copy(update={"policy": "cascade", "cloud_model": "motion-cloud"})
    stack = Stack(spec, tmp_path, tmp_path / "models")
    stack.broker_port, stack.offload_port, stack.gateway_port = 1883, 8001, 8600
    argv = stack.agent_argv(0, 8080, tmp_path / "repo")
    s = settings_from_args(argv[argv.index("--agent-id") :])
    assert (s.policy, s.cloud_model, s.cloud) == ("cascade", "motion-cloud", stack.cloud_target)
    policy = make_policy(s.policy, **policy_params(s))
    assert isinstance(policy, Cascade) and policy.min_confidence == s.cascade_min_confidence
    # The burst: a device at 3x its capacity, several batches queued ahead of this one.
    burst = Observed(
        now=0.0,
        deadline=spec.slo_ms / 1000.0,
        batch_size=spec.max_batch,
        local_queue_s=0.2,
        local_service_s=0.052,
        remote_configured=True,
        remote_available=True,
        remote_rtt_s=0.045,
        remote_p95_s=0.06,
        budget_ok=True,
    )
    assert policy.decide(burst).route is Route.REMOTE
    assert make_policy("local-only").decide(burst).route is Route.LOCAL
