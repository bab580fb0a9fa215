"""Issue 16 item 9: junk on distinct topics must not fill the stream table and lock real
sensors out; idle streams make room for new ones (counted)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edge_agent.app.wiring import make_topics
from edge_agent.ingest.core import AgentCore
from edge_agent.ops.stats import Stats
from models.repository import ModelRepository


class _Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        self.sent.extend(messages)


def _core(repo: Path, **kw: Any) -> tuple[AgentCore, _Sink]:
    sink = _Sink()
    core = AgentCore(
        "a1", "site-1", make_topics(""), sink, Stats(), slo_s=None, max_payload_bytes=65536, **kw
    )
    core.use_manifest(ModelRepository(repo, check=False).manifest("motion-edge"))
    return core, sink


def _reading(seq: int) -> bytes:
    return json.dumps({"ts": time.time(), "seq": seq, "values": [0.5] * 6}).encode()


def test_junk_on_distinct_topics_allocates_no_streams(repo: Path) -> None:
    core, _ = _core(repo, max_streams=100)
    now = time.monotonic()
    for i in range(10_000):
        core.ingest(f"sensors/s/junk{i}/x", b'{"values": "nope"}', now)
    assert core.streams == {}  # validated before a stream was allocated
    assert core.stats.deadletter_by_reason == {"bad-type": 10_000}
    assert core.ingest("sensors/s/real/imu", _reading(0), now) is not None  # not locked out


def test_a_full_table_evicts_idle_streams_or_refuses_with_a_reason(repo: Path) -> None:
    core, sink = _core(repo, max_streams=50, stream_idle_s=60.0)
    now = time.monotonic()
    for i in range(50):
        assert core.ingest(f"sensors/s/d{i}/imu", _reading(0), now) is not None
    # Full of live streams: the 51st is refused (counted, dead-lettered), nobody evicted.
    assert core.ingest("sensors/s/new/imu", _reading(0), now) is None
    assert core.stats.deadletter_by_reason["too-many-streams"] == 1
    reason = json.loads(sink.sent[-1][1])
    assert reason["reason"] == "too-many-streams" and "none idle" in reason["detail"]
    # Half of them go quiet for longer than the idle limit: they make room.
    for i in range(25):
        core.streams[f"sensors/s/d{i}/imu"].last_seen = now - 120.0
    assert core.ingest("sensors/s/new/imu", _reading(0), now) is not None
    assert core.stats.evicted == 25 and len(core.streams) == 26
    assert "sensors/s/d30/imu" in core.streams  # live ones kept
