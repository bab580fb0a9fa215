"""The Kubernetes probes of the edge agent and the gateway point at endpoints the programs
serve: liveness at ``/healthz``, readiness at ``/readyz`` (the endpoints' behaviour is
tested on the running programs in test_logs.py and tests/cloud_gateway)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.manifests.rendering import pod_spec, render, workloads


def _served_paths(container: str) -> set[str]:
    if container == "cloud-gateway":
        from cloud_gateway.routes import ROUTES

        return {r.path for r in ROUTES if r.method == "GET"}
    from edge_agent.ops.http import make_app

    app = make_app(None)  # type: ignore[arg-type]  # routes only; nothing is served
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET"}


def _containers(target: str, name: str) -> list[dict[str, Any]]:
    found = [
        c for w in workloads(render(target)) for c in pod_spec(w)["containers"] if c["name"] == name
    ]
    assert found, f"no {name} container in the {target} render"
    return found


@pytest.mark.parametrize(
    ("target", "name"),
    [("edge-cpu", "edge-agent"), ("edge-jetson", "edge-agent"), ("cloud", "cloud-gateway")],
)
def test_liveness_is_healthz_and_readiness_is_readyz(target: str, name: str) -> None:
    served = _served_paths(name)
    assert {"/healthz", "/readyz"} <= served
    for c in _containers(target, name):
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in served, (name, probe)
