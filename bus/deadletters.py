"""The dead letter: a reading the agent refused, on ``deadletter/{agent}`` (QoS 0).

Produced by the agent for every payload that fails validation (``bus.readings.decode``'s
reasons: too large, not JSON, wrong shape, non-finite value, ...), so an operator sees
why a sensor's data was dropped without the agent logging every one; consumed by
whoever watches the topic (``tests`` and dashboards). Only the first 256 bytes of the
payload travel, base64-encoded, with its full size.
"""

from __future__ import annotations

import base64
import time

from pydantic import BaseModel, ConfigDict, Field

PAYLOAD_HEAD = 256  # bytes of the refused payload carried in the message


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: str = Field(description="short machine reason, e.g. 'not-json', 'too-large'")
    topic: str = Field(max_length=256, description="where the payload was published")
    detail: str = Field(max_length=300, description="human text")
    agent: str
    ts: float = Field(description="when the agent refused it, Unix seconds")
    payload_b64: str = Field(description=f"the first {PAYLOAD_HEAD} bytes, base64")
    payload_bytes: int = Field(ge=0, description="the payload's full size")


def dead_letter_json(agent: str, topic: str, payload: bytes, reason: str, detail: str) -> str:
    """The ``deadletter/{agent}`` message for one refused payload."""
    return DeadLetter(
        reason=reason,
        topic=topic[:256],
        detail=detail[:300],
        agent=agent,
        ts=time.time(),
        payload_b64=base64.b64encode(payload[:PAYLOAD_HEAD]).decode(),
        payload_bytes=len(payload),
    ).model_dump_json()
