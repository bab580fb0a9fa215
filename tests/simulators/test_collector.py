"""Collector + metrics on a real broker: known results in, exact figures out."""

from __future__ import annotations

import asyncio
import json
import time

from bus.topics import Topics
from simulators.collector import Collector, ResultColumns
from simulators.metrics import analyze, expected_seqs, loss, stream_loss
from simulators.mqtt_wire import AsyncWirePublisher, PacketIds, publish_frame


def _result(stream: str, seq: int, ts: float, route: str, version: int) -> bytes:
    site, device, name = stream.split("/")
    body = {
        "site": site,
        "device": device,
        "stream": name,
        "seq": seq,
        "ts": ts,
        "model": "motion-edge",
        "version": version,
        "output": {"label": "Walking"},
        "route": route,
        "reason": "test",
        "deadline_met": True,
        "agent": "a1",
        "latency_ms": {"total": 3.0, "queue": 1.0, "compute": 2.0, "network": 0.0},
    }
    return json.dumps(body).encode()


def test_expected_seqs_grid() -> None:
    assert list(expected_seqs(99, 100, 10)) == []
    assert list(expected_seqs(100, 100, 10)) == [99]
    assert list(expected_seqs(130, 100, 10)) == [99, 109, 119, 129]


def test_loss_counts_missing_duplicates_off_grid_and_unknown() -> None:
    r = ResultColumns()
    for stream, seq in [("s/a/x", 99), ("s/a/x", 99), ("s/a/x", 119), ("s/a/x", 100), ("z/z/z", 9)]:
        r.stream.append(stream)
        r.seq.append(seq)
    got = loss(r, {"s/a/x": 130, "s/b/x": 50}, 100, 10)
    # 99, 100, 119 answered: 109 hides in the 100->119 gap, 129 is the missing tail.
    assert got["expected"] == 4 and got["received"] == 3 and got["missing"] == 2
    assert got["duplicates"] == 1 and got["off_grid"] == 1 and got["unknown_streams"] == 1
    assert got["worst_streams"] == {"s/a/x": 2}


def test_stream_loss_counts_a_restarted_grid_by_its_gap() -> None:
    # An agent that restarts its windows after seq 239 answers 363, 373, ...: the
    # 12 windows a continuous grid would have answered in between are lost.
    seqs = list(range(99, 240, 10)) + list(range(363, 600, 10))
    assert stream_loss(seqs, 600, 100, 10) == 12
    assert stream_loss(list(range(99, 600, 10)), 600, 100, 10) == 0
    assert stream_loss([], 600, 100, 10) == 51
    assert stream_loss([], 99, 100, 10) == 0
    assert stream_loss([129, 139], 150, 100, 10) == 4  # head 99..119 lost, tail 149 lost


async def test_collector_measures_latency_loss_and_offload(mosquitto, topic_prefix: str) -> None:
    topics = Topics(results=f"{topic_prefix}r", fleet=f"{topic_prefix}f")
    collector = Collector(mosquitto.url, topics=topics).start()
    pub = AsyncWirePublisher("127.0.0.1", mosquitto.port, f"res-{topic_prefix}")
    await pub.connect()
    ids = PacketIds()
    start = time.time()
    frames = []
    # Stream A: all 4 windows of 130 readings, one duplicated, every other one "cloud".
    # Stream B: 2 of 4 windows; its results are 200 ms old (an SLO miss at 100 ms).
    for k, seq in enumerate([99, 109, 119, 129, 129]):
        body = _result("s1/a/imu", seq, start - 0.010, "cloud" if k % 2 else "edge", 1)
        frames.append(publish_frame(f"{topics.results}/s1/a/imu", body, qos=1, packet_id=ids()))
    for seq in (99, 129):
        body = _result("s1/b/imu", seq, start - 0.200, "edge", 2)
        frames.append(publish_frame(f"{topics.results}/s1/b/imu", body, qos=1, packet_id=ids()))
    status = json.dumps({"agent_id": "a1", "online": True, "models": {"m": {"version": 2}}})
    frames.append(publish_frame(f"{topics.fleet}/a1/status", status.encode(), retain=True))
    frames.append(publish_frame(f"{topics.results}/s1/a/imu", b"not json"))
    await pub.send(frames)
    async with asyncio.timeout(5):
        await pub.wait_pubacks(7)
    await pub.close()
    await collector.drain(quiet_s=0.5, limit_s=5)
    collector.stop()

    assert collector.count() == 7 and collector.bad == 1
    assert collector.versions() == {"a1": {"m": 2}}
    report = analyze(
        collector.results,
        {"s1/a/imu": 130, "s1/b/imu": 130},
        window=100,
        hop=10,
        slo_ms=100.0,
        start=start - 1.0,
    )
    assert report["loss"]["expected"] == 8 and report["loss"]["received"] == 6
    assert report["loss"]["missing"] == 2 and report["loss"]["duplicates"] == 1
    assert report["slo_attainment"] == 5 / 7
    assert report["offload_share"] == 2 / 7
    assert report["versions"] == {"motion-edge v1": 5, "motion-edge v2": 2}
    lat = report["latency_ms"]
    assert 10.0 <= lat["p50"] < 100.0 and 200.0 <= lat["max"] < 400.0
    assert report["buckets"][0]["results"] == 7


def test_detection_recall_and_false_alarms_against_the_fault_schedule() -> None:
    from simulators.metrics import detection
    from simulators.payloads import FaultWindow

    r = ResultColumns()
    # dev00000 is faulty from 10 s to 20 s (every=10); dev00001 is always healthy.
    rows = [
        ("s/dev00000/vib", 5.0, False),  # healthy, correct
        ("s/dev00000/vib", 11.0, True),  # straddles the fault start: ignored
        ("s/dev00000/vib", 15.0, True),  # faulty, detected
        ("s/dev00000/vib", 18.0, False),  # faulty, missed
        ("s/dev00001/vib", 15.0, True),  # healthy, false alarm
        ("s/dev00001/vib", 16.0, False),  # healthy, correct
        ("s/dev00001/vib", 17.0, None),  # a classifier result: not counted
    ]
    for stream, t, flag in rows:
        r.stream.append(stream)
        r.ts.append(100.0 + t)
        r.anomaly.append(flag)
    got = detection(r, [FaultWindow("bearing", 10.0, 10.0, every=10)], 100.0, window_s=4.0)
    assert got == {
        "flagged": 3, "recall": 0.5, "false_alarm_rate": 1 / 3,
        "faulty_windows": 2, "healthy_windows": 3,
    }  # fmt: skip
    assert detection(ResultColumns(), [], 0.0, 1.0) is None
