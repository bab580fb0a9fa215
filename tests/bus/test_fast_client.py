"""The agent's MQTT link fast paths against a real mosquitto: reads and raw writes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from bus.broker import BrokerUrl, make_client
from edge_agent.transport.link import MqttLink
from simulators.mqtt_wire import PacketIds, WirePublisher, publish_frame


def _link(url: str, filters: list[str], control: list[str], **kw: Any) -> MqttLink:
    return MqttLink(
        BrokerUrl.parse(url),
        f"link-{time.monotonic_ns()}",
        filters=filters,
        qos=1,
        share_group=None,
        clean_session=True,
        control_topics=control,
        on_connection=lambda up: None,
        loop=asyncio.get_running_loop(),
        **kw,
    )


async def _until(cond: Any, within: float = 10.0) -> None:
    for _ in range(int(within / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    assert cond()


async def test_qos0_reads_take_the_fast_path_and_qos1_reads_the_acked_one(
    mosquitto: Any, topic_prefix: str
) -> None:
    fast: list[tuple[str, bytes]] = []
    acked: list[tuple[str, bytes]] = []
    control: list[tuple[str, bytes]] = []
    ctl = f"{topic_prefix}/desired"
    link = _link(
        mosquitto.url,
        [f"{topic_prefix}/s/+"],
        [ctl],
        ingest=lambda t, p, a: fast.append((t, p)),
        ingest_acked=lambda t, p, a: acked.append((t, p)),
        on_control=lambda t, p: control.append((t, p)),
    )
    link.start()
    try:
        await _until(lambda: link.connected)
        await asyncio.sleep(0.2)  # subscriptions granted
        ids = PacketIds()
        sent0: list[tuple[str, bytes]] = []
        sent1: list[tuple[str, bytes]] = []
        frames = []
        for i in range(3000):
            # sizes cross the 64 KiB read buffer and the 2-byte length boundary
            body = (b"%06d" % i) * (1 + (i * 37) % 4000 if i % 100 == 0 else 10)
            topic = f"{topic_prefix}/s/{i % 7}"
            if i % 10 == 3:
                frames.append(publish_frame(topic, body, qos=1, packet_id=ids()))
                sent1.append((topic, body))
            else:
                frames.append(publish_frame(topic, body))
                sent0.append((topic, body))
        frames.append(publish_frame(ctl, b'{"fast": true}'))
        with WirePublisher("127.0.0.1", mosquitto.port, f"pub-{topic_prefix}") as pub:
            pub.send(frames)
            assert pub.wait_pubacks(len(sent1))
        await _until(lambda: len(fast) == len(sent0) and len(acked) == len(sent1) and control)
        assert fast == sent0 and acked == sent1  # intact and in order on each path
        assert control == [(ctl, b'{"fast": true}')]
        assert link.client.fast_count >= len(sent0) // 2  # most QoS-0 reads skipped paho
        assert link.messages == len(sent0) + len(sent1) + 1
    finally:
        link.stop()


async def test_raw_result_frames_never_interleave_with_paho_publishes(
    mosquitto: Any, topic_prefix: str
) -> None:
    got: list[tuple[str, bytes, int]] = []
    lock = threading.Lock()
    sub = make_client(BrokerUrl.parse(mosquitto.url), f"sub-{topic_prefix}")

    def on_message(c: Any, u: Any, m: Any) -> None:
        with lock:
            got.append((m.topic, m.payload, m.qos))

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(f"{topic_prefix}/r/#", 1)
    sub.loop_start()
    link = _link(
        mosquitto.url,
        [f"{topic_prefix}/unused"],
        [],
        ingest=lambda t, p, a: None,
        on_control=lambda t, p: None,
    )
    offline_before = link.dropped_offline
    link.publish_many([(f"{topic_prefix}/r/x", "before connect")], 0)
    assert link.dropped_offline == offline_before + 1  # counted, not queued forever
    link.start()
    try:
        await _until(lambda: link.connected)
        await asyncio.sleep(0.3)
        threads, per, batch = 4, 2500, 25

        def worker(w: int) -> None:
            for b in range(per // batch):
                msgs = [
                    (
                        f"{topic_prefix}/r/{w}",
                        f'{{"w":{w},"i":{b * batch + k},"pad":"{"x" * 300}"}}',
                    )
                    for k in range(batch)
                ]
                link.publish_many(msgs, 0)
                if b % 10 == 0:  # paho-queued QoS-1 packets in between
                    link.publish(f"{topic_prefix}/r/q{w}", f"q{b}", 1)

        ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        qos1 = threads * (per // batch // 10)
        await _until(lambda: len(got) == threads * per + qos1, within=20.0)
        with lock:
            for w in range(threads):
                seq = [p for t, p, q in got if t == f"{topic_prefix}/r/{w}"]
                assert [int(p.split(b'"i":')[1].split(b",")[0]) for p in seq] == list(range(per))
                assert [p for t, p, q in got if t == f"{topic_prefix}/r/q{w}"] == [
                    f"q{b}".encode() for b in range(0, per // batch, 10)
                ]
        assert link.client.raw_dropped == 0 and link.flushed()
    finally:
        link.stop()
        sub.loop_stop()
        sub.disconnect()


async def test_fast_path_acknowledges_qos1_after_the_handler_returns(
    mosquitto: Any, topic_prefix: str
) -> None:
    """The broker redelivers unacknowledged QoS-1 messages to a persistent session, so an
    empty redelivery after a reconnect proves every PUBACK of the fast path was sent."""
    client_id = f"acker-{topic_prefix}"
    topic = f"{topic_prefix}/s/x"
    seen: list[bytes] = []

    def handler(t: str, p: bytes, a: float) -> None:
        seen.append(p)

    def make(ingest_acked: Any) -> MqttLink:
        link = MqttLink(
            BrokerUrl.parse(mosquitto.url),
            client_id,
            filters=[topic],
            qos=1,
            share_group=None,
            clean_session=False,
            ingest=lambda t, p, a: None,
            ingest_acked=ingest_acked,
            control_topics=[],
            on_control=lambda t, p: None,
            on_connection=lambda up: None,
            loop=asyncio.get_running_loop(),
        )
        link.start()
        return link

    link = make(handler)
    await _until(lambda: link.connected)
    await asyncio.sleep(0.2)
    ids = PacketIds()
    with WirePublisher("127.0.0.1", mosquitto.port, f"p-{topic_prefix}") as pub:
        pub.send([publish_frame(topic, b"%d" % i, qos=1, packet_id=ids()) for i in range(100)])
        assert pub.wait_pubacks(100)
    await _until(lambda: len(seen) == 100)
    assert seen == [b"%d" % i for i in range(100)]
    assert link.client.fast_count >= 50
    await asyncio.sleep(0.3)  # the PUBACKs leave with the next write
    link.stop()
    again: list[bytes] = []
    link2 = make(lambda t, p, a: again.append(p))
    try:
        await _until(lambda: link2.connected)
        await asyncio.sleep(0.5)
        assert again == []  # every one was acknowledged: nothing redelivered
    finally:
        link2.stop()
