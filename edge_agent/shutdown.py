"""Stopping an edge agent without losing an acknowledged reading.

Order matters on the MQTT side: stop reading first (unread QoS-1 readings stay with
the broker for the next start), answer everything already accepted, save the open
windows so windows that span the restart are still produced, say "offline" (retained),
and only then close the socket once the MQTT thread has written everything out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

from edge_agent.state import save_streams

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent
    from edge_agent.mqtt_link import MqttLink


async def close_link(agent: EdgeAgent, link: MqttLink, *, drain_s: float = 5.0) -> None:
    """Drain ``agent`` and stop ``link`` (a started session)."""
    s = agent.settings
    link.pause_reading()
    await asyncio.sleep(0.05)
    await agent.dispatcher.drain(within_s=drain_s)
    state = s.stream_state_path()
    if state is not None:
        save_streams(agent.core, state)
    if link.connected:
        doc = {"agent_id": s.agent_id, "site": s.site, "online": False, "ts": time.time()}
        link.client.publish(agent.topics.status(s.agent_id), json.dumps(doc), 1, True)
    end = time.monotonic() + 2.0
    # The socket is owned by the MQTT thread: poll until it has written everything.
    while not link.flushed() and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    link.stop()


async def stop_agent(agent: EdgeAgent) -> None:
    """Stop ``agent``'s tasks, drain its MQTT side, then close every other part.

    Safe after a failed or partial start: each part is closed only if it was built.
    """
    for t in agent.tasks:
        t.cancel()
    for t in agent.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    link = agent.link
    if link is not None and not link.started:
        link.stop()  # start() failed before the session began: nothing to drain
    elif link is not None:
        await close_link(agent, link)
    if agent.updater is not None:
        with contextlib.suppress(Exception):
            await agent.updater.close()
    if agent.http_runner is not None:
        await agent.http_runner.cleanup()
    if agent.remote is not None:
        with contextlib.suppress(Exception):
            await agent.remote.close()
    if agent.store is not None:
        agent.store.stop()
    agent.models.close()
    agent.executor.shutdown(wait=False)
    agent.telemetry.close()
