"""The broker configs of the manifests, run in real mosquitto processes: authentication,
ACLs, and the edge -> cloud bridge from the documented template (TLS, topic remapping,
fleet status up, desired versions down)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import pytest

from bus.broker import BrokerUrl
from tests.manifests.brokers import PASSWORDS, Broker, Client, start_broker, stop
from tests.manifests.rendering import MANIFESTS


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Broker]]:
    cloud = start_broker("cloud", tmp_path_factory.mktemp("cloud-broker"))
    template = (MANIFESTS / "edge" / "base" / "mosquitto" / "bridge.conf.example").read_text()
    bridge = (
        template.replace("CLOUD_MQTT_HOST:8883", f"127.0.0.1:{cloud.ports[8883]}")
        .replace("BRIDGE_PASSWORD", PASSWORDS["site-a"])
        .replace("SITE", "site-a")
    )
    files = {"bridge.conf": bridge.encode(), "ca.crt": (cloud.root / "tls" / "ca.crt").read_bytes()}
    edge = start_broker("edge-cpu", tmp_path_factory.mktemp("edge-broker"), bridge=files)
    try:
        yield edge, cloud
    finally:
        stop(edge)
        stop(cloud)


def test_edge_broker_requires_a_password(brokers: tuple[Broker, Broker]) -> None:
    edge, _ = brokers
    anonymous = BrokerUrl.parse(f"mqtt://127.0.0.1:{edge.ports[1883]}")
    wrong = BrokerUrl.parse(f"mqtt://sensor:nope@127.0.0.1:{edge.ports[1883]}")
    for url in (anonymous, wrong):
        client = Client(url, "intruder")
        assert client.rc != 0
        client.close()


def test_edge_acl_separates_sensors_agents_and_viewers(brokers: tuple[Broker, Broker]) -> None:
    edge, _ = brokers
    agent = Client(edge.url("edge-agent"), "agent-acl")
    viewer = Client(edge.url("viewer"), "viewer-acl")
    sensor = Client(edge.url("sensor"), "sensor-acl")
    try:
        agent.subscribe("$share/agents/sensors/+/+/+")
        viewer.subscribe("results/#")
        sensor.publish("sensors/site-a/dev1/acc", b'{"seq": 1}')
        assert agent.expect()[0] == "sensors/site-a/dev1/acc"
        sensor.publish("results/site-a/dev1/acc", b"forged")  # sensors may not publish results
        assert viewer.nothing()
        agent.publish("results/site-a/dev1/acc", b"real")
        assert viewer.expect()[:2] == ("results/site-a/dev1/acc", b"real")
    finally:
        for c in (agent, viewer, sensor):
            c.close()


def test_bridge_carries_results_status_and_desired_versions(
    brokers: tuple[Broker, Broker],
) -> None:
    edge, cloud = brokers
    ca = cloud.root / "tls" / "ca.crt"
    agent = Client(edge.url("edge-agent"), "agent-bridge")
    reader = Client(cloud.url("uplink-reader", 8883), "reader", ca_file=ca)
    gateway = Client(cloud.url("cloud-gateway"), "gateway")
    try:
        reader.subscribe("uplink/#")
        gateway.subscribe("fleet/+/status")
        agent.subscribe("fleet/node-1/desired")
        # The bridge connects asynchronously: retry the first publish until it arrives.
        deadline = time.monotonic() + 20
        while True:
            agent.publish("results/site-a/dev1/acc", b"r1")
            try:
                topic, payload, _ = reader.expect(timeout=1)
                break
            except queue.Empty:
                assert time.monotonic() < deadline, (edge.root / "mosquitto.log").read_text()
        assert (topic, payload) == ("uplink/site-a/results/site-a/dev1/acc", b"r1")
        agent.publish("alerts/site-a/dev1", b"a1")
        assert reader.expect()[:2] == ("uplink/site-a/alerts/site-a/dev1", b"a1")
        agent.publish("uplink/node-1", b"rollup")
        assert reader.expect()[:2] == ("uplink/site-a/node-1", b"rollup")
        agent.publish("fleet/node-1/status", b'{"online": true}', retain=True)
        assert gateway.expect()[:2] == ("fleet/node-1/status", b'{"online": true}')
        gateway.publish("fleet/node-1/desired", b'{"models": {}}', retain=True)
        assert agent.expect()[:2] == ("fleet/node-1/desired", b'{"models": {}}')
        agent.publish("deadletter/node-1", b"bad")  # stays on the site
        assert reader.nothing()
    finally:
        for c in (agent, reader, gateway):
            c.close()


def test_cloud_acl_confines_a_site_to_its_prefix(brokers: tuple[Broker, Broker]) -> None:
    _, cloud = brokers
    ca = cloud.root / "tls" / "ca.crt"
    reader = Client(cloud.url("uplink-reader", 8883), "reader-acl", ca_file=ca)
    site = Client(cloud.url("site-a", 8883), "site-a-direct", ca_file=ca)
    try:
        reader.subscribe("uplink/#")
        site.publish("uplink/site-b/results/x", b"spoofed")
        assert reader.nothing()
        site.publish("uplink/site-a/results/x", b"own")
        assert reader.expect()[:2] == ("uplink/site-a/results/x", b"own")
    finally:
        reader.close()
        site.close()
