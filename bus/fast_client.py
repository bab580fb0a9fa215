"""The agent's paho client, with fast paths for the two hot packet kinds.

paho stays in charge of the session (CONNECT, subscriptions, QoS-1 acks, keep-alive,
reconnects); two things it does per packet are too slow at tens of thousands of
messages/s, so :class:`FastClient` takes them over:

* **Reading.** paho reads every packet with two or three tiny ``recv()`` calls and builds
  an ``MQTTMessage`` for it. Here one ``recv()`` pulls up to 64 KiB and the complete
  PUBLISH packets at its head are split out directly (:func:`split_publishes`): QoS 0 to
  ``fast_deliver``, QoS 1 to ``fast_acked`` and, once that returned (the agent's journal
  has the reading), a PUBACK into the raw write queue, in arrival order as MQTT requires
  (paho keeps no state for incoming QoS 1). Anything else (QoS 2, acks, pings, a packet
  cut by the buffer's end) goes through paho's own parser, served from the same buffer.
* **Writing QoS-0 results.** paho's ``publish()`` builds a message-info object with a
  condition variable, queues a dict and pokes a socket pair per message, and writes each
  packet with its own ``send()``. :meth:`FastClient.queue_raw` takes already-encoded
  frames (:class:`bus.frames.FrameEncoder`) and :meth:`write_pending` sends them
  in large writes. Frames never interleave with paho's: a half-written raw chunk is
  finished before paho's queue is written, and raw bytes only start when paho's queue
  is empty.

Pinned to paho-mqtt 2.x internals (``_sock_recv``, ``_in_packet``, ``_out_packet``,
``_sock``); the tests in tests/edge_agent/test_mqtt_client.py run it against mosquitto.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt

from bus.frames import puback_frame, split_publishes

_OK = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
_LOST = mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


class FastClient(mqtt.Client):
    """A paho client with the fast paths of the module doc; build it with
    ``bus.broker.make_client(..., client_class=FastClient)``, then set ``fast_deliver``
    (QoS-0 PUBLISHes, on the network thread; None: everything goes through paho's
    ``on_message``) and ``fast_acked`` (QoS-1 PUBLISHes, each acknowledged once it
    returned; None: paho handles QoS 1). ``fast_batch`` bounds how many packets one
    ``loop_read`` delivers, so the caller's loop gets control regularly; raw results over
    ``raw_limit`` queued bytes are dropped and counted (``raw_dropped``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx_buf, self._rx_off = b"", 0
        self._raw_out = bytearray()
        self._raw_inflight: memoryview | None = None
        self._raw_lock = threading.Lock()
        self.raw_limit = 64 * 2**20
        self.raw_dropped = 0
        self.fast_count = 0
        self.fast_deliver: Callable[[str, bytes], None] | None = None
        self.fast_acked: Callable[[str, bytes], None] | None = None
        self._acks: list[int] = []
        self.fast_batch = 64

    # -- reading -------------------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rx_off >= len(self._rx_buf) and not self._refill():
            return b""  # EOF: let paho see it
        buf, off = self._rx_buf, self._rx_off
        out = buf[off : off + bufsize]
        self._rx_off = off + len(out)
        return out

    def _refill(self) -> bytes:
        """One ``recv()`` of up to 64 KiB into the buffer (raises what ``recv`` raises)."""
        self._rx_buf, self._rx_off = mqtt.Client._sock_recv(self, 65536), 0
        return self._rx_buf

    def buffered(self) -> bool:
        return self._rx_off < len(self._rx_buf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        deliver = self.fast_deliver
        if deliver is None or self._sock is None or self._in_packet["command"] != 0:
            return super().loop_read(max_packets)  # paho is inside a packet: let it finish
        if self._rx_off >= len(self._rx_buf):
            try:
                data = self._refill()
            except BlockingIOError:
                return _OK
            except OSError:
                return super().loop_read(max_packets)  # paho reports the error its way
            if not data:
                return super().loop_read(max_packets)  # EOF is sticky: paho sees it too
        acked = self._deliver_acked if self.fast_acked is not None else None
        off, n = split_publishes(self._rx_buf, self._rx_off, self.fast_batch, deliver, acked)
        if self._acks:
            self.queue_raw(b"".join(puback_frame(p) for p in self._acks), ack=True)
            self._acks.clear()
        if n:
            self._rx_off = off
            self.fast_count += n
            self._last_bytes_received = time.monotonic()  # keep-alive bookkeeping
            return _OK
        return super().loop_read(max_packets)

    def _deliver_acked(self, topic: str, payload: bytes, packet_id: int) -> None:
        self.fast_acked(topic, payload)  # type: ignore[misc]
        self._acks.append(packet_id)  # acknowledged only after the handler returned

    # -- writing -------------------------------------------------------------------------
    def queue_raw(self, frames: bytes, ack: bool = False) -> bool:
        """Queue encoded frames (any thread). True if the queue was empty before (the
        caller then wakes the network thread). Results over the limit are dropped and
        counted; acknowledgements (``ack``) never are."""
        with self._raw_lock:
            if not ack and len(self._raw_out) + len(frames) > self.raw_limit:
                self.raw_dropped += 1
                return False
            was_empty = not self._raw_out
            self._raw_out += frames
        return was_empty

    def wants_write(self) -> bool:
        return bool(self._out_packet) or self._raw_inflight is not None or bool(self._raw_out)

    def write_pending(self) -> mqtt.MQTTErrorCode:
        """Network thread: write what paho and the raw queue hold, never interleaved."""
        if self._raw_inflight is not None:
            rc = self._send_raw()
            if rc != _OK or self._raw_inflight is not None:
                return rc
        if self._out_packet:
            rc = self.loop_write()
            if rc != _OK or self._out_packet:
                return rc  # paho's packet is half-written: it goes first
        with self._raw_lock:
            if not self._raw_out:
                return _OK
            data = bytes(self._raw_out)
            self._raw_out.clear()
        self._raw_inflight = memoryview(data)
        return self._send_raw()

    def _send_raw(self) -> mqtt.MQTTErrorCode:
        view = self._raw_inflight
        sock = self._sock
        if view is None or sock is None:
            return _OK if sock is not None else _LOST
        try:
            send = cast(Any, sock).send  # paho's SocketLike says bytes; memoryviews work
            while view:
                view = view[send(view) :]
        except _WOULD_BLOCK:
            self._raw_inflight = view
            return _OK
        except OSError:
            return _LOST
        self._raw_inflight = None
        self._last_msg_out = time.monotonic()
        return _OK

    def reconnect(self) -> mqtt.MQTTErrorCode:
        # Bytes read or half-written on the old connection mean nothing on the new one.
        self._rx_buf, self._rx_off = b"", 0
        self._raw_inflight = None
        return super().reconnect()
