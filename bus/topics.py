"""MQTT topic contract (see docs/architecture.md): frozen value objects, one place.

``sensors/{site}/{device}/{stream}`` readings in; ``results/...`` and ``alerts/...`` out;
``deadletter/{agent}``; ``fleet/{agent}/status``; ``fleet/{site}/desired`` and
``fleet/{agent}/desired`` (retained). Prefixes are configurable per deployment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.errors import InvalidInput

_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def check_segment(value: str, what: str) -> str:
    """Topic segments must not contain wildcards, separators or control characters."""
    if not _SEGMENT.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r} in topic: use [A-Za-z0-9_.:-], 1-64 chars")
    return value


def check_filter(topic_filter: str) -> str:
    """A subscribable filter: ``#`` only last and alone in its level, ``+`` alone."""
    if not topic_filter or len(topic_filter) > 512 or "\x00" in topic_filter:
        raise InvalidInput(f"invalid topic filter {topic_filter!r}")
    levels = topic_filter.split("/")
    for k, level in enumerate(levels):
        if ("#" in level and (level != "#" or k != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise InvalidInput(f"invalid topic filter {topic_filter!r}: bad wildcard in {level!r}")
    return topic_filter


@dataclass(frozen=True, slots=True)
class StreamId:
    """Identifies one sensor stream: ``{site}/{device}/{stream}``."""

    site: str
    device: str
    stream: str

    def __post_init__(self) -> None:
        check_segment(self.site, "site")
        check_segment(self.device, "device")
        check_segment(self.stream, "stream")

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}/{self.stream}"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic prefixes of one deployment."""

    sensors: str = "sensors"
    results: str = "results"
    alerts: str = "alerts"
    deadletter: str = "deadletter"
    fleet: str = "fleet"
    uplink: str = "uplink"

    def sensor_filter(self) -> str:
        return f"{self.sensors}/+/+/+"

    def parse_sensor(self, topic: str) -> StreamId:
        """``sensors/{site}/{device}/{stream}`` -> StreamId, or InvalidInput."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.sensors:
            raise InvalidInput(f"not a sensor topic: {topic[:200]!r}")
        return StreamId(parts[1], parts[2], parts[3])

    def sensor(self, sid: StreamId) -> str:
        return f"{self.sensors}/{sid.key}"

    def result(self, sid: StreamId) -> str:
        return f"{self.results}/{sid.key}"

    def alert(self, sid: StreamId) -> str:
        return f"{self.alerts}/{sid.site}/{sid.device}"

    def dead_letter(self, agent: str) -> str:
        return f"{self.deadletter}/{check_segment(agent, 'agent')}"

    def status(self, agent: str) -> str:
        return f"{self.fleet}/{check_segment(agent, 'agent')}/status"

    def status_filter(self) -> str:
        return f"{self.fleet}/+/status"

    def desired(self, target: str) -> str:
        """Desired model versions for a site or an agent (retained)."""
        return f"{self.fleet}/{check_segment(target, 'target')}/desired"

    def uplink_topic(self, agent: str) -> str:
        return f"{self.uplink}/{check_segment(agent, 'agent')}"
