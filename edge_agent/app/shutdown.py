"""Stopping an edge agent's MQTT side without losing an acknowledged reading.

Order matters: stop reading first (unread QoS-1 readings stay with the broker for the
next start), answer everything already accepted and save the open windows (each
pipeline's :meth:`~edge_agent.app.pipeline.Pipeline.drain`), say "offline" (retained), and
only then close the socket once the MQTT thread has written everything out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from edge_agent.transport.link import MqttLink


class Drainable(Protocol):
    async def drain(self, within_s: float = 5.0) -> None: ...


async def close_link(
    link: MqttLink,
    pipelines: Sequence[Drainable],
    status_topic: str,
    offline_doc: str,
    *,
    drain_s: float = 5.0,
) -> None:
    """Drain every pipeline and stop ``link`` (a started session)."""
    link.pause_reading()
    await asyncio.sleep(0.05)
    await asyncio.gather(*(p.drain(within_s=drain_s) for p in pipelines))
    if link.connected:
        link.client.publish(status_topic, offline_doc, 1, True)
    end = time.monotonic() + 2.0
    # The socket is owned by the MQTT thread: poll until it has written everything.
    while not link.flushed() and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    link.stop()
