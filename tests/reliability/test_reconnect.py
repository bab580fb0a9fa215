"""The agent reconnects within about a second of a broker that was up recently."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from bus.broker import BrokerUrl
from edge_agent.transport.link import MAX_BACKOFF_S, RECENT_CAP_S, MqttLink


def _link(url: str, loop: asyncio.AbstractEventLoop) -> MqttLink:
    return MqttLink(
        BrokerUrl.parse(url),
        f"recon-{time.monotonic_ns()}",
        filters=["recon/never/#"],
        qos=1,
        share_group=None,
        clean_session=True,
        ingest=lambda t, p, a: None,
        control_topics=[],
        on_control=lambda t, p: None,
        on_connection=lambda up: None,
        loop=loop,
    )


def test_backoff_cap_depends_on_how_recently_the_broker_was_up(mosquitto: Any) -> None:
    from tests.conftest import free_port

    loop = asyncio.new_event_loop()
    try:
        never = _link(f"mqtt://127.0.0.1:{free_port()}", loop)  # nothing listens there
        far = list(itertools.islice(never._reconnect_delays(), 40))
        assert max(far) > RECENT_CAP_S and max(far) <= MAX_BACKOFF_S
        up = _link(mosquitto.url, loop)
        up.start()
        try:
            end = time.monotonic() + 5
            while not up.connected and time.monotonic() < end:
                time.sleep(0.02)
            assert up.connected
            near = list(itertools.islice(up._reconnect_delays(), 40))
            assert max(near) <= RECENT_CAP_S
        finally:
            up.stop()
    finally:
        loop.close()


@pytest.mark.slow
def test_agent_reconnects_within_a_second_of_a_broker_restart(tmp_path: Path, repo: Path) -> None:
    """After 12 s without a broker the old backoff waited uniformly up to 10 s more."""
    from benchmarks.reliability.harness import Agent, Broker, wait_until

    broker = Broker(tmp_path / "broker")
    agent = Agent(broker.url, repo, "recon", "--policy", "local-only")
    try:
        agent.wait_ready()
        broker.kill()
        assert wait_until(lambda: not agent.status()["broker_connected"], 5)
        time.sleep(12.0)
        broker.start()
        up = time.monotonic()
        assert wait_until(lambda: agent.status()["broker_connected"], 10, 0.02)
        assert time.monotonic() - up < 1.5
    finally:
        agent.kill()
        broker.stop()
