"""Real mosquitto processes running the broker configs of the rendered manifests, with
container paths and ports moved into a temporary directory, plus a small MQTT client."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import queue
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bus.broker import BrokerUrl, make_client
from tests.conftest import free_port, wait_for_port
from tests.manifests.rendering import find, render

PASSWORDS = {
    "edge-agent": "agent-pw",
    "sensor": "sensor-pw",
    "viewer": "viewer-pw",
    "site-a": "bridge-pw",
    "cloud-gateway": "gateway-pw",
    "uplink-reader": "reader-pw",
}


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    ports: dict[int, int]
    root: Path

    def url(self, user: str, listener: int = 1883) -> BrokerUrl:
        scheme = "mqtts" if listener == 8883 else "mqtt"
        pw = PASSWORDS[user]
        return BrokerUrl.parse(f"{scheme}://{user}:{pw}@127.0.0.1:{self.ports[listener]}")


def tls_files(directory: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (cloud broker's listener)."""
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("edgecloud test CA", ca_key, "edgecloud test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = cert("127.0.0.1", key, "edgecloud test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(server.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def start_broker(target: str, root: Path, bridge: dict[str, bytes] | None = None) -> Broker:
    """The target's mosquitto ConfigMap with container paths and ports moved to ``root``."""
    exe, passwd = shutil.which("mosquitto"), shutil.which("mosquitto_passwd")
    if exe is None or passwd is None:
        raise RuntimeError("mosquitto is not installed: .ci/run installs it with apt")
    data = find(render(target), "ConfigMap", _config_name(target))["data"]
    for sub in ("config", "secrets", "data", "bridge", "tls"):
        (root / sub).mkdir(parents=True)
    ports = {1883: free_port(), 8883: free_port()}
    conf = data["mosquitto.conf"].replace("/mosquitto/", f"{root}/")
    for port, free in ports.items():
        conf = conf.replace(f"listener {port}\n", f"listener {free} 127.0.0.1\n")
    if os.geteuid() == 0:  # mosquitto would switch to its own user and lose the temp files
        conf = "user root\n" + conf
    (root / "config" / "mosquitto.conf").write_text(conf)
    (root / "config" / "acl").write_text(data["acl"])
    pwfile = root / "secrets" / "passwd"
    pwfile.touch()
    for user, pw in PASSWORDS.items():
        subprocess.run([passwd, "-b", str(pwfile), user, pw], check=True, timeout=10)
    tls_files(root / "tls")
    for name, content in (bridge or {}).items():  # the mosquitto-bridge Secret's files
        (root / "bridge" / name).write_bytes(content.replace(b"/mosquitto/", f"{root}/".encode()))
    log = (root / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(root / "config" / "mosquitto.conf")],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port(ports[1883])
    except TimeoutError:
        proc.kill()
        raise AssertionError((root / "mosquitto.log").read_text()) from None
    return Broker(proc, ports, root)


def _config_name(target: str) -> str:
    return next(
        r["metadata"]["name"]
        for r in render(target)
        if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("mosquitto-config")
    )


def stop(broker: Broker) -> None:
    broker.proc.terminate()
    try:
        broker.proc.wait(5)
    except subprocess.TimeoutExpired:
        broker.proc.kill()
        broker.proc.wait()


class Client:
    """A connected paho client (the project's factory) that queues what it receives."""

    def __init__(self, url: BrokerUrl, name: str, ca_file: Path | None = None) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.connected: queue.Queue[int] = queue.Queue()
        self.client = make_client(url, name, ca_file=str(ca_file) if ca_file else None)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        self.rc = self.connected.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[bool] = queue.Queue()
        self.client.on_subscribe = lambda *a: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def expect(self, timeout: float = 10.0) -> tuple[str, bytes, bool]:
        return self.messages.get(timeout=timeout)

    def nothing(self, wait: float = 0.5) -> bool:
        time.sleep(wait)
        return self.messages.empty()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
