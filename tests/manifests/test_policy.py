"""Deployment policy on the rendered manifests: resources, probes, hardening, tags, labels."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from tests.manifests.rendering import (
    REPO,
    TARGETS,
    Resource,
    container_env,
    containers,
    find,
    pod_spec,
    render,
    workloads,
)

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
# registry/path:tag with a concrete tag (not "latest"), or an immutable digest.
PINNED_IMAGE = re.compile(
    r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[a-f0-9]{64})$"
)
OUR_IMAGES = "ghcr.io/edgecloud/"

params = pytest.mark.parametrize("target", sorted(TARGETS))


def container_problems(resources: tuple[Resource, ...]) -> list[str]:
    out: list[str] = []
    for c in containers(resources):
        spec, pod = c.spec, c.pod
        res = spec.get("resources", {})
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(kind, {}))
            if missing:
                out.append(f"{c.where}: no {kind} for {sorted(missing)}")
        gpu_req = res.get("requests", {}).get("nvidia.com/gpu")
        if gpu_req is not None and gpu_req != res.get("limits", {}).get("nvidia.com/gpu"):
            out.append(f"{c.where}: nvidia.com/gpu request without an equal limit")
        if not c.init:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in spec:
                    out.append(f"{c.where}: no {probe}")
        sc: dict[str, Any] = spec.get("securityContext", {})
        psc: dict[str, Any] = pod.get("securityContext", {})
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{c.where}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser", 1)) == 0:
            out.append(f"{c.where}: runs as uid 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{c.where}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c.where}: privilege escalation not disabled")
        if sc.get("privileged"):
            out.append(f"{c.where}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            out.append(f"{c.where}: capabilities not dropped")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            out.append(f"{c.where}: seccomp profile is not RuntimeDefault")
        image = spec["image"]
        if not PINNED_IMAGE.match(image) or image.endswith(":latest"):
            out.append(f"{c.where}: image {image!r} is not pinned to a tag or digest")
        if image.startswith(OUR_IMAGES):
            version = c.workload["metadata"]["labels"].get("app.kubernetes.io/version", "")
            if not image.split(":", 1)[-1].startswith(version):
                out.append(f"{c.where}: image {image} does not match version label {version}")
        mounts = {m["name"] for m in spec.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        if mounts - volumes:
            out.append(f"{c.where}: mounts undefined volumes {sorted(mounts - volumes)}")
        ports = {p.get("name") for p in spec.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = spec.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                out.append(f"{c.where}: {probe} uses unknown port name {port}")
    for w in workloads(resources):
        if pod_spec(w).get("automountServiceAccountToken") is not False:
            out.append(f"{w['kind']}/{w['metadata']['name']}: mounts an API token it never uses")
    return out


@params
def test_container_policy(target: str) -> None:
    assert container_problems(render(target)) == []


def test_container_policy_catches_violations() -> None:
    """The checks bite: a copy of the agent with typical mistakes is reported."""
    resources = copy.deepcopy(render("edge-cpu"))
    agent = next(c for c in containers(resources) if c.spec["name"] == "edge-agent")
    agent.spec["image"] = "ghcr.io/edgecloud/edge-agent:latest"
    del agent.spec["readinessProbe"]
    del agent.spec["resources"]["limits"]
    agent.spec["securityContext"]["readOnlyRootFilesystem"] = False
    agent.pod["securityContext"]["runAsNonRoot"] = False
    del agent.spec["securityContext"]["runAsNonRoot"]
    where = "DaemonSet/edge-agent:edge-agent"
    assert set(container_problems(resources)) == {
        f"{where}: image 'ghcr.io/edgecloud/edge-agent:latest' is not pinned to a tag or digest",
        f"{where}: image ghcr.io/edgecloud/edge-agent:latest does not match version label 0.1.0",
        f"{where}: no readinessProbe",
        f"{where}: no limits for ['cpu', 'memory']",
        f"{where}: root filesystem is writable",
        f"{where}: runAsNonRoot is not true",
    }


def _labels_problems(res: Resource, where: str) -> list[str]:
    labels = res.get("metadata", {}).get("labels", {})
    out = [f"{where}: missing label {k}" for k in RECOMMENDED_LABELS if not labels.get(k)]
    if labels.get("app.kubernetes.io/part-of") != "edgecloud":
        out.append(f"{where}: part-of is not edgecloud")
    if labels.get("app.kubernetes.io/managed-by") != "kustomize":
        out.append(f"{where}: managed-by is not kustomize")
    if not re.fullmatch(r"\d+\.\d+\.\d+", labels.get("app.kubernetes.io/version", "")):
        out.append(f"{where}: version label is not a release version")
    return out


@params
def test_recommended_labels(target: str) -> None:
    out: list[str] = []
    for res in render(target):
        where = f"{res['kind']}/{res['metadata']['name']}"
        out += _labels_problems(res, where)
        if res["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            template = res["spec"]["template"]
            out += _labels_problems(template, f"{where} pod template")
            selector = res["spec"]["selector"]["matchLabels"]
            tpl_labels = template["metadata"]["labels"]
            if any(tpl_labels.get(k) != v for k, v in selector.items()):
                out.append(f"{where}: selector does not match its pod template")
            if any(k.endswith(("/version", "/managed-by")) for k in selector):
                out.append(f"{where}: selector uses a label that changes on upgrade")
    assert out == []


def _selected_pods(resources: tuple[Resource, ...], selector: dict[str, str]) -> list[Resource]:
    return [
        w
        for w in workloads(resources)
        if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]


@params
def test_selectors_reach_pods_and_ports(target: str) -> None:
    resources = render(target)
    out: list[str] = []
    for res in resources:
        where = f"{res['kind']}/{res['metadata']['name']}"
        if res["kind"] == "Service":
            pods = _selected_pods(resources, res["spec"]["selector"])
            if not pods:
                out.append(f"{where}: selects no pod")
            names = {
                p.get("name") for w in pods for c in pod_spec(w)["containers"]
                for p in c.get("ports", [])
            }  # fmt: skip
            for port in res["spec"]["ports"]:
                if isinstance(port["targetPort"], str) and port["targetPort"] not in names:
                    out.append(f"{where}: targetPort {port['targetPort']} is no container port")
        elif res["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = res["spec"].get("selector", res["spec"].get("podSelector", {}))
            if sel.get("matchLabels") and not _selected_pods(resources, sel["matchLabels"]):
                out.append(f"{where}: selects no pod")
        elif res["kind"] == "HorizontalPodAutoscaler":
            ref = res["spec"]["scaleTargetRef"]
            find(resources, ref["kind"], ref["name"])
            if res["spec"]["minReplicas"] < 2:
                out.append(f"{where}: fewer than 2 replicas cannot survive a disruption")
        elif res["kind"] == "Ingress":
            for rule in res["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    find(resources, "Service", path["backend"]["service"]["name"])
    assert out == []


def _agent(target: str) -> tuple[Resource, dict[str, Any]]:
    resources = render(target)
    agent = next(c for c in containers(resources) if c.spec["name"] == "edge-agent")
    return agent.pod, {**agent.spec, "env": container_env(agent, resources)}


def test_jetson_overlay_uses_the_gpu() -> None:
    pod, agent = _agent("edge-jetson")
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"]["edgecloud.io/accelerator"] == "jetson"
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert agent["env"]["EDGE_BACKEND"] == "tensorrt"
    assert agent["image"].endswith("-l4t-r36.4")
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/run/jtop.sock"]]["hostPath"]["type"] == "Socket"
    cache = volumes[mounts[agent["env"]["EDGE_ENGINE_CACHE_DIR"]]]
    assert cache["hostPath"]["path"].startswith("/var/lib/edgecloud/")


def test_cpu_overlay_uses_onnxruntime_off_jetson_nodes() -> None:
    pod, agent = _agent("edge-cpu")
    assert "runtimeClassName" not in pod
    assert "nvidia.com/gpu" not in agent["resources"]["limits"]
    assert agent["env"]["EDGE_BACKEND"] == "onnxruntime"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (expr["key"], expr["operator"], expr["values"]) == (
        "edgecloud.io/accelerator", "NotIn", ["jetson"],
    )  # fmt: skip


@pytest.mark.parametrize("target", ["edge-cpu", "edge-jetson"])
def test_agent_identity_and_state_survive_restarts(target: str) -> None:
    pod, agent = _agent(target)
    assert agent["env"]["EDGE_AGENT_ID"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in agent["volumeMounts"]:
        if mount["mountPath"] in ("/var/lib/edgecloud/repository", "/var/lib/edgecloud/db"):
            assert "hostPath" in volumes[mount["name"]], mount
            assert not mount.get("readOnly")


def test_offload_server_gets_a_gpu_and_a_disruption_budget() -> None:
    resources = render("cloud")
    server = next(c for c in containers(resources) if c.spec["name"] == "offload-server")
    assert server.spec["resources"]["requests"]["nvidia.com/gpu"] == 1
    hpa = find(resources, "HorizontalPodAutoscaler", "offload-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    pdb = find(resources, "PodDisruptionBudget", "offload-server")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def external_objects(resources: tuple[Resource, ...]) -> set[tuple[str, str, str]]:
    """(kind, name, key) of every Secret/ConfigMap used but not created by the render."""
    rendered = {(r["kind"], r["metadata"]["name"]) for r in resources}
    used: set[tuple[str, str, str]] = set()
    for w in workloads(resources):
        pod = pod_spec(w)
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                keys = [i["key"] for i in vol["secret"].get("items", [])] or [""]
                used |= {("Secret", vol["secret"]["secretName"], k) for k in keys}
            if "configMap" in vol:
                used.add(("ConfigMap", vol["configMap"]["name"], ""))
        for c in pod["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add(("Secret", ref["name"], ref["key"]))
    for r in resources:
        if r["kind"] == "Ingress":
            used |= {("Secret", t["secretName"], "") for t in r["spec"].get("tls", [])}
    return {u for u in used if (u[0], u[1]) not in rendered}


@params
def test_external_secrets_and_configmaps_are_documented(target: str) -> None:
    """Every object an operator must create by hand is named, with its keys, in deploy.md."""
    deploy = (REPO / "docs" / "deploy.md").read_text()
    external = external_objects(render(target))
    assert external, "expected Secrets created outside git"
    missing = [
        f"{kind} {name} {key}".strip()
        for kind, name, key in sorted(external)
        if f"`{name}`" not in deploy or (key and f"`{key}`" not in deploy)
    ]
    assert missing == []
