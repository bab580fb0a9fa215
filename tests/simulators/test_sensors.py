"""Sensor fleet rate accuracy and payload integrity through a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from bus.broker import BrokerUrl, make_client
from bus.topics import Topics
from simulators.payloads import BasicMotionsReplay, FaultWindow, VibrationSource
from simulators.sensors import SensorFleet, make_streams
from simulators.shapes import Burst, Diurnal, Ramp, Steady


class _Counter:
    def __init__(self, port: int, topic: str) -> None:
        self.count = 0
        self.last: dict[str, dict] = {}
        self.seqs: dict[str, list[int]] = {}
        self.bodies: dict[str, list[dict]] = {}
        self._lock = threading.Condition()
        ready = threading.Event()
        self.client = make_client(BrokerUrl("127.0.0.1", port, False), f"cnt-{topic[:12]}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=0)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            self.count += 1
            self.last[msg.topic] = body
            self.seqs.setdefault(msg.topic, []).append(body["seq"])
            self.bodies.setdefault(msg.topic, []).append(body)
            self._lock.notify_all()

    def wait_for(self, n: int, timeout: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self.count >= n, timeout)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_shapes() -> None:
    assert Steady().factor(123) == 1.0
    ramp = Ramp(start=0.0, end=2.0, t0=10, t1=20)
    assert ramp.factor(5) == 0.0 and ramp.factor(15) == 1.0 and ramp.factor(30) == 2.0
    burst = Burst(at=(10,), length_s=5, multiplier=3)
    assert burst.factor(9.9) == 1 and burst.factor(10) == 3 and burst.factor(15) == 1
    periodic = Burst(at=(10,), length_s=2, multiplier=4, every_s=10)
    assert periodic.factor(21) == 4 and periodic.factor(23) == 1
    day = Diurnal(period_s=100, low=0.2)
    assert abs(day.factor(0) - 0.2) < 1e-9 and abs(day.factor(50) - 1.0) < 1e-9


async def test_steady_rate_is_accurate_and_payloads_valid(mosquitto, topic_prefix: str) -> None:
    topics = Topics(sensors=topic_prefix)
    counter = _Counter(mosquitto.port, f"{topic_prefix}/#")
    streams = make_streams(500, ["s1", "s2"])
    fleet = SensorFleet(
        "127.0.0.1", mosquitto.port, streams, BasicMotionsReplay(), rate_hz=10.0, topics=topics
    )
    await fleet.connect()
    t0 = time.time()
    stats = await fleet.run(3.0)
    await fleet.close()
    await asyncio.to_thread(counter.wait_for, stats.total, 5.0)
    counter.stop()
    expected = 500 * 10.0 * 3.0
    assert abs(stats.total - expected) / expected < 0.02, stats.total
    assert counter.count == stats.total
    # Every stream sent its share (phases spread sensors, none starves).
    assert min(stats.sent.values()) >= 29 and max(stats.sent.values()) <= 31
    for topic, seqs in counter.seqs.items():
        assert seqs == list(range(len(seqs))), topic
    body = counter.last[f"{topic_prefix}/s2/dev00001/imu"]
    assert len(body["values"]) == 6 and t0 <= body["ts"] <= time.time()


async def test_multi_row_messages_carry_consecutive_readings(mosquitto, topic_prefix: str) -> None:
    topics = Topics(sensors=topic_prefix)
    counter = _Counter(mosquitto.port, f"{topic_prefix}/#")
    streams = make_streams(50, ["s1"])
    source = BasicMotionsReplay()
    fleet = SensorFleet(
        "127.0.0.1",
        mosquitto.port,
        streams,
        source,
        rate_hz=20.0,
        topics=topics,
        rows_per_message=10,
    )
    await fleet.connect()
    stats = await fleet.run(2.0)
    await fleet.close()
    assert all(n % 10 == 0 for n in stats.sent.values())  # only whole messages count
    assert 50 * 20 * 2 * 0.7 <= stats.total <= 50 * 20 * 2
    await asyncio.to_thread(counter.wait_for, stats.total // 10, 5.0)
    counter.stop()
    assert counter.count == stats.total // 10
    for i, sid in enumerate(streams):
        got = counter.bodies[f"{topic_prefix}/{sid.site}/{sid.device}/imu"]
        assert [b["seq"] for b in got] == list(range(9, stats.sent[sid.key], 10))
        rows = [row for b in got for row in b["values"]]
        want = [json.loads(source.row(i, s)) for s in range(stats.sent[sid.key])]
        assert rows == want  # the same readings as single-row messages, in order


async def test_start_spread_desynchronises_window_boundaries(mosquitto, topic_prefix: str) -> None:
    # 10 Hz with a 1 s spread: every stream starts within the first second, so after 2.5 s
    # stream counts differ by up to 10 readings (a hop): windows no longer end in lockstep.
    streams = make_streams(200, ["s1"])
    fleet = SensorFleet(
        "127.0.0.1", mosquitto.port, streams, BasicMotionsReplay(), rate_hz=10.0,
        topics=Topics(sensors=topic_prefix), start_spread_s=1.0,
    )  # fmt: skip
    await fleet.connect()
    stats = await fleet.run(2.5)
    await fleet.close()
    counts = sorted(stats.sent.values())
    assert counts[0] >= 14 and counts[-1] <= 26, counts
    assert counts[-1] - counts[0] >= 8, counts  # spread over (almost) a whole hop
    ends = {n % 10 for n in counts}
    assert len(ends) == 10, ends  # window boundaries fall in every tenth of the hop
    expected = 200 * 10.0 * 2.5 - 200 * 10.0 * 0.5  # each stream starts 0.5 s late on average
    assert abs(stats.total - expected) / expected < 0.05, stats.total


async def test_ramp_rate_follows_shape(mosquitto, topic_prefix: str) -> None:
    streams = make_streams(200, ["s1"])
    fleet = SensorFleet(
        "127.0.0.1",
        mosquitto.port,
        streams,
        VibrationSource((FaultWindow("bearing", 0.0, 10.0),)),
        rate_hz=20.0,
        shape=Ramp(start=0.0, end=2.0, t0=0.0, t1=2.0),
        topics=Topics(sensors=topic_prefix),
    )
    await fleet.connect()
    stats = await fleet.run(2.0)
    await fleet.close()
    expected = 200 * 20.0 * 1.0 * 2.0  # mean factor 1 over the ramp
    assert abs(stats.total - expected) / expected < 0.03, stats.total
    # The second second carries about three times the first (integral of a linear ramp).
    first, second = stats.per_second[0], sum(stats.per_second[1:])
    assert 2.5 < second / first < 3.6, stats.per_second
