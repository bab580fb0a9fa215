"""The rendered manifests, played: ``kubectl kustomize`` of ``edge/overlays/cpu`` and
``cloud``, run with ``podman kube play`` from the images ``docker/images.py`` builds.

What changes between the rendered output and what is played, and why:

* image names only where the manifest names an image this machine cannot have: the
  upstream ``eclipse-mosquitto`` becomes our Debian mosquitto image (same paths and uid),
  the CUDA ``offload-server`` its CPU tag (with ``OFFLOAD_BACKEND=onnxruntime``: no GPU);
* kinds: Deployments are played as Deployments; the agent's DaemonSet as its pod template
  (podman 4.3 has no DaemonSet). Services, Ingress, NetworkPolicies, HPA, PDB,
  ServiceMonitor and Namespaces are not played: there is no cluster network or API
  server; every pod gets ``hostNetwork`` and talks over 127.0.0.1;
* site values the manifests leave to the operator (placeholder hosts, the node's
  hostPath directories, Secrets, trusted-key ConfigMaps, the gateway's desired-state
  key, the node's enrolment token and the broker passwd/ACL that ``cloud-gateway fleet
  enrol`` and ``fleet broker-config`` make; both run on the host against the gateway's
  database volume, since they need ``mosquitto_passwd``, which the gateway image lacks)
  and the ports: every listener
  gets a free loopback port (ConfigMap values, mosquitto ``listener`` lines and the
  matching ``containerPort``) so the suite's other tests cannot collide with it;
* the downward-API agent id becomes a literal (podman 4.3 lacks ``spec.nodeName``) and
  secret volumes say ``optional: false``: podman 4.3 dereferences a nil ``optional`` and
  mounts nothing for an optional one (the test creates every Secret, the edge broker's
  optional bridge Secret included);
* probes: podman runs them through systemd timers, which a container host without
  systemd lacks, so the test runs every probe the manifests name itself, inside the
  probed container (``podman exec``).

Every pod, volume and Secret carries the test's prefix and is removed by name.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.broker import BrokerUrl
from cloud_gateway.client import GatewayClient
from tests.conftest import free_port
from tests.images.podman import Created, exec_in, inspect, logs, podman
from tests.manifests.brokers import Client, tls_files
from tests.manifests.rendering import MANIFESTS, Resource, render

UID = 10001
LOCAL_IMAGES = {
    "docker.io/library/eclipse-mosquitto:2.0.20": "ghcr.io/edgecloud/mosquitto:0.1.0",
    "ghcr.io/edgecloud/offload-server:0.1.0-cuda12.6": "ghcr.io/edgecloud/offload-server:0.1.0-cpu",
}
NOT_PLAYED = {"Namespace", "Service", "Ingress", "NetworkPolicy", "HorizontalPodAutoscaler",
              "PodDisruptionBudget", "ServiceMonitor"}  # fmt: skip
PASSWORDS = {"edge-agent": "agent-pw", "sensor": "sensor-pw", "viewer": "viewer-pw",
             "cloud-gateway": "gateway-pw"}  # fmt: skip
TOKENS = {"admin": "admin-token", "agent": "agent-token", "viewer": "viewer-token"}


class Stage:
    """One test's podman objects, names and ports."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"ect{uuid.uuid4().hex[:6]}"
        self.site = f"{self.prefix}-site"
        self.agent = f"{self.prefix}-node"
        self.tmp = tmp
        self.created = Created(self.prefix)
        names = ("edge-mqtt", "cloud-mqtt", "cloud-mqtts", "agent-http", "grpc", "metrics", "gw")
        self.ports = {k: free_port() for k in names}
        self.containers: dict[str, str] = {}  # "<workload>/<container>" -> podman name
        self.probes: list[tuple[str, str, dict[str, Any], int]] = []

    def name(self, name: str) -> str:
        return f"{self.prefix}-{name}"


def _hash_free(name: str) -> str:
    """A generated ConfigMap's name without kustomize's content hash."""
    head, _, tail = name.rpartition("-")
    return head if len(tail) == 10 and head else name


def _patch_pod(st: Stage, pod: Resource, host_paths: dict[str, Path], ports: dict[str, int],
               agent_env: dict[str, str]) -> None:  # fmt: skip
    pod["hostNetwork"] = True
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            volume["configMap"]["name"] = st.name(_hash_free(volume["configMap"]["name"]))
        if "secret" in volume:
            volume["secret"]["secretName"] = st.name(volume["secret"]["secretName"])
            volume["secret"]["optional"] = False  # every Secret exists here (see module doc)
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            claim["claimName"] = st.name(claim["claimName"])
        if "hostPath" in volume:
            volume["hostPath"]["path"] = str(host_paths[volume["hostPath"]["path"]])
    for c in pod["containers"]:
        c["image"] = LOCAL_IMAGES.get(c["image"], c["image"])
        for source in c.get("envFrom", []):
            source["configMapRef"]["name"] = st.name(_hash_free(source["configMapRef"]["name"]))
        env = []
        for var in c.get("env", []):
            ref = var.get("valueFrom", {})
            if "fieldRef" in ref:
                var = {"name": var["name"], "value": agent_env[var["name"]]}
            elif "secretKeyRef" in ref:
                ref["secretKeyRef"]["name"] = st.name(ref["secretKeyRef"]["name"])
            env.append(var)
        c["env"] = env
        for port in c.get("ports", []):
            port["containerPort"] = ports[port["name"]]
        # With hostNetwork the ports are the processes' own; podman 4.3 would turn
        # containerPort into port mappings, which host networking refuses.
        c["x-ports"] = c.pop("ports", [])


def _workloads(st: Stage, resources: tuple[Resource, ...], site: str,
               patch: Callable[[Resource], None]) -> Iterator[Resource]:  # fmt: skip
    for res in copy.deepcopy(list(resources)):
        kind = res["kind"]
        if kind in NOT_PLAYED:
            continue
        meta = res["metadata"]
        meta.pop("namespace", None)
        if kind == "ConfigMap":
            meta["name"] = st.name(_hash_free(meta["name"]))
        elif kind == "PersistentVolumeClaim":
            meta["name"] = st.name(meta["name"])
            st.created.volumes.append(meta["name"])
        elif kind == "Deployment":
            meta["name"] = st.name(f"{site}-{meta['name']}")
            res["spec"]["replicas"] = 1  # one per host: hostNetwork ports
            st.created.pods.append(f"{meta['name']}-pod-0")  # podman 4.3's pod name
            for c in res["spec"]["template"]["spec"]["containers"]:
                st.containers[f"{site}/{c['name']}"] = f"{meta['name']}-pod-0-{c['name']}"
        elif kind == "DaemonSet":
            template = res["spec"]["template"]
            res = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": st.name(f"{site}-{meta['name']}"),
                                "labels": template["metadata"]["labels"],
                                "annotations": template["metadata"].get("annotations", {})},
                   "spec": template["spec"]}  # fmt: skip
            res["spec"]["restartPolicy"] = "Always"
            st.created.pods.append(res["metadata"]["name"])
            for c in res["spec"]["containers"]:
                st.containers[f"{site}/{c['name']}"] = f"{res['metadata']['name']}-{c['name']}"
        else:
            raise AssertionError(f"{kind} has no play rule: add it to NOT_PLAYED or play it")
        patch(res)
        yield res


def _listeners(conf: str, ports: dict[int, int]) -> str:
    for port, free in ports.items():
        assert f"listener {port}\n" in conf
        conf = conf.replace(f"listener {port}\n", f"listener {free} 127.0.0.1\n")
    return conf


def _volume_tar(src: Path) -> Path:
    """``src`` as a tar owned by the manifests' uid (``podman volume import``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(src.rglob("*")):
            info = tar.gettarinfo(str(path), str(path.relative_to(src)))
            info.uid = info.gid = UID
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    out = src.parent / f"{src.name}.tar"
    out.write_bytes(buf.getvalue())
    return out


def _passwd(st: Stage, users: dict[str, str]) -> bytes:
    """A mosquitto password file, made by the broker image's own mosquitto_passwd."""
    work = st.tmp / f"passwd-{len(users)}-{uuid.uuid4().hex[:4]}"
    work.mkdir()
    (work / "passwd").touch()
    for user, pw in users.items():
        podman("run", "--rm", "--user", "0", "--network", "none", "-v", f"{work}:/w",
               LOCAL_IMAGES["docker.io/library/eclipse-mosquitto:2.0.20"],
               "mosquitto_passwd", "-b", "/w/passwd", user, pw)  # fmt: skip
    return (work / "passwd").read_bytes()


def _build_models(out: Path) -> dict[str, Path]:
    """``python -m models build``: every built-in model v1, then motion-edge v2, one key."""
    env = dict(os.environ)
    for argv in (
        ["--out", str(out)],
        ["--out", str(out), "--version", "2", "--model", "motion-edge"],
    ):
        proc = subprocess.run([sys.executable, "-m", "models", "build", *argv], env=env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    bundles = {p.name: p for p in (out / "bundles").iterdir()}
    return bundles


def _probe(container: str, probe: dict[str, Any], port: int) -> str | None:
    """Run one probe inside its container; None when it answers, else why not."""
    if "httpGet" in probe:
        url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
        code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=3)"
        proc = exec_in(container, "python3", "-c", code)
    else:
        proc = exec_in(container, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}")
    return None if proc.returncode == 0 else f"{container}: {probe} -> {proc.stderr[-300:]}"


def _wait(what: str, check: Callable[[], Any], timeout: float, st: Stage) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # a service still starting
            last = exc
        time.sleep(0.5)
    dump = "\n".join(logs(c) for c in st.containers.values())
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{dump}")


def _results(viewer: Client, route: str | None, timeout: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            topic, payload, _ = viewer.expect(timeout=0.5)
        except Exception:
            continue
        if topic.startswith("deadletter/"):
            raise AssertionError(f"the agent rejected a reading: {payload[:500]!r}")
        if topic.startswith("results/"):
            result = json.loads(payload)
            if route is None or result["route"] == route:
                got.append(result)
                if len(got) >= 3:
                    return got
    return got


def _publish(sensor: Client, site: str, seq: list[int], n: int = 3) -> None:
    for _ in range(n):
        seq[0] += 100  # a chunk's seq is its last row's
        rows = [[0.1 * (i % 7), 0.2, 9.8, 0.01 * i, 0.0, 0.0] for i in range(100)]
        body = {"ts": time.time(), "seq": seq[0], "values": rows}
        sensor.publish(f"sensors/{site}/watch1/imu", json.dumps(body).encode())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rendered_manifests_run_in_containers(built_images: list[dict[str, object]],
                                              tmp_path: Path) -> None:  # fmt: skip
    assert shutil.which("podman"), "podman is required (.ci/run installs it)"
    st = Stage(tmp_path)
    try:
        _play_and_check(st)
    finally:
        problems = st.created.teardown()
        assert problems == [], problems
        assert st.created.leftovers() == []


def _play_and_check(st: Stage) -> None:
    p = st.ports
    # -- site material: models, node directories, TLS, passwords, tokens ---------------
    bundles = _build_models(st.tmp / "models")
    node = st.tmp / "node"
    host_paths = {"/var/lib/edgecloud/repository": node / "repository",
                  "/var/lib/edgecloud/db": node / "db",
                  "/var/lib/edgecloud/identity": node / "identity"}  # fmt: skip
    shutil.copytree(st.tmp / "models" / "repository", node / "repository")
    (node / "db").mkdir()
    (node / "identity").mkdir()
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(node)], check=True)
    cloud_repo = st.name("offload-model-repository")
    st.created.volumes.append(cloud_repo)
    podman("volume", "create", cloud_repo)
    podman("volume", "import", cloud_repo, str(_volume_tar(st.tmp / "models" / "repository")))
    tls = st.tmp / "tls"
    tls.mkdir()
    tls_files(tls)  # a CA and a certificate for 127.0.0.1 (server and client side)
    tls_data = {n: (tls / n).read_bytes() for n in ("ca.crt", "tls.crt", "tls.key")}
    public_key = (st.tmp / "models" / "keys" / "dev.pub").read_text()

    bridge = (
        (MANIFESTS / "edge/base/mosquitto/bridge.conf.example").read_text()
        .replace("CLOUD_MQTT_HOST:8883", f"127.0.0.1:{p['cloud-mqtts']}")
        .replace("BRIDGE_PASSWORD", "bridge-pw")
        .replace("SITE", st.site)
    )  # fmt: skip
    host_users = {u: PASSWORDS[u] for u in ("sensor", "viewer")}
    cloud_users = {"cloud-gateway": PASSWORDS["cloud-gateway"], st.site: "bridge-pw"}
    mk = st.created.secret
    mk(st.name("mosquitto-bridge"), {"bridge.conf": bridge.encode(), "ca.crt": tls_data["ca.crt"]},
       as_env=False)  # fmt: skip
    mk(st.name("edge-grpc-tls"), tls_data, as_env=False)
    # No credentials in the URL: user = agent id, password = its enrolment token.
    broker_url = f"mqtt://127.0.0.1:{p['edge-mqtt']}"
    mk(st.name("edge-mqtt"), {"broker-url": broker_url.encode()}, as_env=True)
    # The cloud's Secrets; the cloud broker's password file has its own name (both
    # sites' manifests call theirs mosquitto-auth, and here they share one podman).
    tokens = "".join(f"{role} {token}\n" for role, token in TOKENS.items())
    mk(st.name("cloud-gateway-tokens"), {"tokens": tokens.encode()}, as_env=False)
    mk(st.name("offload-server-tls"), tls_data, as_env=False)
    # The gateway's client certificate for the tier (its CN is not an admin subject here:
    # the tier refuses the gateway's load, which the rollout records and carries on).
    mk(st.name("cloud-gateway-grpc-tls"), tls_data, as_env=False)
    mk(st.name("mosquitto-tls"), tls_data, as_env=False)
    mk(st.name("cloud-mosquitto-auth"), {"passwd": _passwd(st, cloud_users)}, as_env=False)
    gw_broker = f"mqtt://cloud-gateway:{PASSWORDS['cloud-gateway']}@127.0.0.1:{p['cloud-mqtt']}"
    mk(st.name("cloud-gateway-mqtt"), {"broker-url": gw_broker.encode()}, as_env=True)

    # -- the rendered manifests, patched as the module doc says ------------------------
    def configmap(name: str, data: dict[str, str]) -> Resource:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": st.name(name)},
                "data": data}  # fmt: skip

    def patch_edge(res: Resource, policy: str) -> None:
        name = _hash_free(res["metadata"]["name"])
        if res["kind"] == "ConfigMap" and name == st.name("mosquitto-config"):
            res["data"]["mosquitto.conf"] = _listeners(res["data"]["mosquitto.conf"],
                                                       {1883: p["edge-mqtt"]})  # fmt: skip
            # The enrolled agents' rules (fleet broker-config), then the static file's
            # users for sensors and viewers (what the site adds for its own clients).
            static = res["data"]["acl"]
            res["data"]["acl"] = broker_acl + "\n" + static[static.index("# Sensors") :]
        elif res["kind"] == "ConfigMap" and name == st.name("edge-agent-config"):
            res["data"] |= {
                "EDGE_SITE": st.site,
                "EDGE_HTTP_HOST": "127.0.0.1",
                "EDGE_HTTP_PORT": str(p["agent-http"]),
                "EDGE_CLOUD": f"127.0.0.1:{p['grpc']}",
                "EDGE_GATEWAY_URL": f"http://127.0.0.1:{p['gw']}",
                "EDGE_POLICY": policy,
                "EDGE_HEARTBEAT_S": "1",
            }
        elif res["kind"] in ("Deployment", "Pod"):
            spec = res["spec"]["template"]["spec"] if res["kind"] == "Deployment" else res["spec"]
            _patch_pod(st, spec, host_paths, {"mqtt": p["edge-mqtt"], "http": p["agent-http"]},
                       {"EDGE_AGENT_ID": st.agent})  # fmt: skip
            for c in spec["containers"]:
                for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if kind in c:
                        probe = c[kind]
                        port = (probe.get("httpGet") or probe.get("tcpSocket"))["port"]
                        number = next(x["containerPort"] for x in c["x-ports"] if x["name"] == port)
                        st.probes.append((f"edge/{c['name']}", kind, probe, number))

    def patch_cloud(res: Resource) -> None:
        name = _hash_free(res["metadata"]["name"])
        if res["kind"] == "ConfigMap" and name == st.name("mosquitto-config"):
            res["metadata"]["name"] = st.name("cloud-mosquitto-config")
            listeners = {1883: p["cloud-mqtt"], 8883: p["cloud-mqtts"]}
            res["data"]["mosquitto.conf"] = _listeners(res["data"]["mosquitto.conf"], listeners)
        elif res["kind"] == "ConfigMap" and name == st.name("offload-server-config"):
            res["data"] |= {
                "OFFLOAD_HOST": "127.0.0.1",
                "OFFLOAD_GRPC_PORT": str(p["grpc"]),
                "OFFLOAD_METRICS_PORT": str(p["metrics"]),
                "OFFLOAD_BACKEND": "onnxruntime",  # no GPU here
            }
        elif res["kind"] == "ConfigMap" and name == st.name("cloud-gateway-config"):
            res["data"] |= {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(p["gw"]),
                "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{p['gw']}",
                "GATEWAY_CLOUD": f"127.0.0.1:{p['grpc']}",
            }
        elif res["kind"] == "PersistentVolumeClaim" and res["metadata"]["name"] == st.name(
            "mosquitto-data"
        ):
            st.created.volumes.remove(res["metadata"]["name"])
            res["metadata"]["name"] = st.name("cloud-mosquitto-data")
            st.created.volumes.append(res["metadata"]["name"])
        elif res["kind"] == "PersistentVolumeClaim" and res["metadata"]["name"] == cloud_repo:
            res["metadata"]["name"] = "__skip__"  # created and filled above
        elif res["kind"] == "Deployment":
            spec = res["spec"]["template"]["spec"]
            ports = {"mqtt": p["cloud-mqtt"], "mqtts": p["cloud-mqtts"], "grpc": p["grpc"],
                     "metrics": p["metrics"], "http": p["gw"]}  # fmt: skip
            _patch_pod(st, spec, host_paths, ports, {})
            for volume in spec.get("volumes", []):
                if volume.get("configMap", {}).get("name") == st.name("mosquitto-config"):
                    volume["configMap"]["name"] = st.name("cloud-mosquitto-config")
                if volume.get("secret", {}).get("secretName") == st.name("mosquitto-auth"):
                    volume["secret"]["secretName"] = st.name("cloud-mosquitto-auth")
                claim = volume.get("persistentVolumeClaim", {})
                if claim.get("claimName") == st.name("mosquitto-data"):
                    claim["claimName"] = st.name("cloud-mosquitto-data")
            for c in spec["containers"]:
                for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if kind in c:
                        probe = c[kind]
                        port = (probe.get("httpGet") or probe.get("tcpSocket"))["port"]
                        number = next(x["containerPort"] for x in c["x-ports"] if x["name"] == port)
                        st.probes.append((f"cloud/{c['name']}", kind, probe, number))

    cloud = [r for r in _workloads(st, render("cloud"), "cloud", patch_cloud)
             if r["metadata"]["name"] != "__skip__"]  # fmt: skip
    cloud.append(configmap("gateway-trusted-keys", {"dev.pub": public_key}))

    def edge_docs(policy: str) -> list[Resource]:
        docs = list(_workloads(st, render("edge-cpu"), "edge", lambda r: patch_edge(r, policy)))
        docs.append(configmap("edge-trusted-keys", {"dev.pub": public_key}))
        docs.append(configmap("gateway-desired-key", {"desired.pub": desired_pub}))
        return docs

    def play(docs: list[Resource], name: str) -> None:
        docs = copy.deepcopy(docs)
        for doc in docs:
            spec = (
                doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc.get("spec")
            )
            for c in (
                (spec or {}).get("containers", []) if doc["kind"] != "PersistentVolumeClaim" else []
            ):
                c.pop("x-ports", None)
        path = st.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        proc = podman("kube", "play", str(path), check=False, timeout=180)
        assert proc.returncode == 0, f"kube play {name}:\n{proc.stderr[-3000:]}"

    play(cloud, "cloud")
    # -- the site's credentials, as docs/deploy.md has the operator make them ----------
    gw = st.containers["cloud/cloud-gateway"]
    ready = {"httpGet": {"path": "/readyz"}}
    _wait("the gateway's readiness", lambda: _probe(gw, ready, p["gw"]) is None, 60, st)
    # enrol and broker-config hash with mosquitto_passwd, which the gateway image lacks
    # (no mosquitto in it): run them on the host, on the gateway's database in its
    # volume, then give the files back to the gateway's uid.
    data = podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                  st.name("cloud-gateway-data")).stdout.strip()  # fmt: skip
    fleet = [str(Path(sys.executable).parent / "cloud-gateway"), "fleet"]
    db = ["--db-path", f"{data}/gateway.sqlite"]
    enrol = subprocess.run([*fleet, "enrol", st.agent, "--site", st.site, *db],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert enrol.returncode == 0, enrol.stderr
    token = enrol.stdout.split()[0]
    (node / "identity" / "token").write_text(token)
    os.chmod(node / "identity" / "token", 0o400)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(node / "identity")], check=True)
    out = st.tmp / "broker"
    conf = subprocess.run([*fleet, "broker-config", "--out", str(out), "--site", st.site, *db],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    subprocess.run(["chown", "-R", f"{UID}:{UID}", data], check=True)
    assert conf.returncode == 0, conf.stderr
    broker_acl = (out / "acl").read_text()
    agents_passwd = (out / "passwd").read_bytes()
    assert st.agent in broker_acl and agents_passwd, (broker_acl, agents_passwd)
    desired_pub = exec_in(gw, "cat", "/var/lib/edgecloud/gateway/desired.pub").stdout
    assert desired_pub.strip(), "the gateway made no desired-state key"
    passwd = agents_passwd.rstrip(b"\n") + b"\n" + _passwd(st, host_users)
    mk(st.name("mosquitto-auth"), {"passwd": passwd}, as_env=False)
    edge = edge_docs("slo-aware")
    kinds = {r["kind"] for r in [*cloud, *edge]}
    assert kinds == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Pod"}, kinds
    play(edge, "edge")

    # -- every process as the manifests' user, on a read-only root ---------------------
    for where, container in st.containers.items():
        info = inspect(container)
        assert info["State"]["Running"], logs(container)
        assert info["HostConfig"]["ReadonlyRootfs"], where
        uid = exec_in(container, "id", "-u").stdout.strip()
        expected = "1883" if where.endswith("/mosquitto") else str(UID)
        assert uid == expected, f"{where} runs as {uid}"
        assert exec_in(container, "touch", "/probe-write").returncode != 0, where

    # -- every probe the manifests name answers inside its container -------------------
    def all_probes() -> list[str] | bool:
        failed = [f for w, _, probe, port in st.probes
                  if (f := _probe(st.containers[w], probe, port))]  # fmt: skip
        if failed:
            raise AssertionError(failed)
        return True

    assert _wait("every probe to answer", lambda: all_probes() is True, 120, st)
    assert len(st.probes) >= 9, st.probes

    # -- readings from the host come back as results -----------------------------------
    edge_url = f"mqtt://%s:%s@127.0.0.1:{p['edge-mqtt']}"
    viewer = Client(BrokerUrl.parse(edge_url % ("viewer", PASSWORDS["viewer"])), st.name("v"))
    sensor = Client(BrokerUrl.parse(edge_url % ("sensor", PASSWORDS["sensor"])), st.name("s"))
    seq = [0]
    try:
        assert viewer.rc == 0 and sensor.rc == 0
        viewer.subscribe(f"results/{st.site}/#")
        viewer.subscribe(f"deadletter/{st.agent}")
        _publish(sensor, st.site, seq)
        local = _results(viewer, None, 60)
        assert local, "no results for readings published from the host\n" + "\n".join(
            logs(c) for c in st.containers.values()
        )
        assert {r["model"] for r in local} == {"motion-edge"}

        # -- a rollout from the containerised gateway reaches the containerised agent --
        gateway = GatewayClient(f"http://127.0.0.1:{p['gw']}", TOKENS["admin"])
        _wait("the agent in the gateway's fleet (heartbeats over the bridge)",
              lambda: any(a["agent_id"] == st.agent for a in gateway.get("/api/v1/fleet")),
              60, st)  # fmt: skip
        gateway.push(bundles["motion-edge-2.bundle"])
        rollout = gateway.post("/api/v1/rollouts", {
            "model": "motion-edge", "version": 2, "strategy": "all-at-once", "bake_s": 0,
            "selector": {"agents": [st.agent]},
            "gates": {"min_samples": 0, "allow_idle_agents": True},
        })  # fmt: skip

        def finished() -> dict[str, Any] | None:
            _publish(sensor, st.site, seq, n=1)  # traffic for the gates
            r = gateway.get(f"/api/v1/rollouts/{rollout['id']}")
            return r if r["state"] in ("succeeded", "rolled_back", "failed") else None

        done = _wait("the rollout to finish", finished, 120, st)
        assert done["state"] == "succeeded", done
        assert _wait("results from version 2", lambda: [r for r in _results(viewer, None, 3)
                                                         if r["version"] == 2], 30, st)  # fmt: skip

        # -- forcing offload: the containerised agent uses the containerised cloud -----
        agent_pod = st.name("edge-edge-agent")
        podman("pod", "rm", "-f", "-t", "5", agent_pod, timeout=60)
        st.created.pods.remove(agent_pod)
        edge = [r for r in edge_docs("cloud-only") if r["kind"] in ("ConfigMap", "Pod")]
        edge = [r for r in edge if "mosquitto" not in r["metadata"]["name"]]
        play(edge, "edge-offload")
        agent = st.containers["edge/edge-agent"]
        _wait("the agent's readiness after the restart",
              lambda: _probe(agent, {"httpGet": {"path": "/readyz"}}, p["agent-http"]) is None,
              60, st)  # fmt: skip
        _publish(sensor, st.site, seq)
        offloaded = _wait("offloaded results", lambda: _results(viewer, "cloud", 5), 60, st)
        assert {r["route"] for r in offloaded} == {"cloud"}
        # The agent kept what the rollout installed on its hostPath repository.
        assert {r["version"] for r in offloaded} <= {1, 2}
    finally:
        viewer.close()
        sensor.close()
