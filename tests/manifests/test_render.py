"""Every kustomize target renders and every resource passes strict schema validation."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.manifests.rendering import TARGETS, render

#: Kubernetes versions the manifests must be valid for (both ship with kubernetes-validate).
K8S_VERSIONS = ("1.31", "1.34")

#: Custom resources without a bundled schema, per target. Exact: a new unvalidated kind
#: must be added here on purpose, it cannot slip through.
EXPECTED_UNVALIDATED: dict[str, set[tuple[str, str]]] = {
    "edge-cpu": set(),
    "edge-jetson": set(),
    "cloud": {("monitoring.coreos.com/v1", "ServiceMonitor")},
    "cloud-postgres": {("monitoring.coreos.com/v1", "ServiceMonitor")},
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_renders_expected_kinds(target: str) -> None:
    kinds = {r["kind"] for r in render(target)}
    expected = {
        "edge-cpu": {"Namespace", "ConfigMap", "Deployment", "DaemonSet", "Service",
                     "PersistentVolumeClaim"},
        "edge-jetson": {"Namespace", "ConfigMap", "Deployment", "DaemonSet", "Service",
                        "PersistentVolumeClaim"},
        "cloud": {"Namespace", "ConfigMap", "Deployment", "Service", "PersistentVolumeClaim",
                  "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "NetworkPolicy",
                  "ServiceMonitor"},
    }  # fmt: skip
    expected["cloud-postgres"] = expected["cloud"]  # the same kinds, one more PDB
    assert kinds == expected[target]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_strict_schema_validation(target: str, version: str) -> None:
    errors: list[str] = []
    unvalidated: set[tuple[str, str]] = set()
    for res in render(target):
        name = f"{res['kind']}/{res['metadata']['name']}"
        try:
            validated = kubernetes_validate.validate(res, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add((res["apiVersion"], res["kind"]))
            continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
            continue
        # The validator silently falls back to an older schema set when one is missing.
        assert validated == version, f"{name} validated against {validated}, not {version}"
    assert errors == []
    assert unvalidated == EXPECTED_UNVALIDATED[target]


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validator really is strict: a typo in a container field fails."""
    workload = next(r for r in render("edge-cpu") if r["kind"] == "DaemonSet")
    broken = {**workload, "spec": {**workload["spec"]}}
    template = dict(broken["spec"]["template"])
    spec = dict(template["spec"])
    spec["containers"] = [{**spec["containers"][0], "imagePullPolcy": "Always"}]
    template["spec"] = spec
    broken["spec"]["template"] = template
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
