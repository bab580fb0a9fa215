"""The stack's MQTT broker: mosquitto from PATH, or the embedded amqtt broker.

``broker_kind`` (``--broker-kind``) picks it: ``auto`` (mosquitto when installed, else
amqtt with a warning), ``mosquitto`` or ``amqtt`` (so the fallback is testable on a
machine that has mosquitto). Either way the broker is a child in the stack's
:class:`~simulators.procs.ProcessSet`, so it dies with the stack, and it counts as
ready only once it answers an MQTT CONNECT.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Literal

from models.errors import ConfigError, MissingDependency, Unavailable
from simulators.health import StackError
from simulators.mqtt_frames import ReplyParser, connect_frame
from simulators.procs import Managed, ProcessSet
from simulators.settings import BrokerKind

DISCONNECT = b"\xe0\x00"

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the child binds it right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_config(port: int, host: str = "127.0.0.1") -> str:
    """A config for a local load-test broker.

    set_tcp_nodelay: without it every small publish may wait 40 ms for Nagle.
    max_queued/max_inflight: a slow subscriber must queue, not drop QoS-1 messages.
    user: started as root, mosquitto switches to user "mosquitto", and the kernel clears
    PR_SET_PDEATHSIG on that credential change, so it would outlive a killed fleet-sim.
    """
    user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
    return (
        f"listener {port} {host}\n"
        f"{user}"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "max_queued_messages 1000000\n"
        "max_inflight_messages 0\n"
        "max_keepalive 65535\n"
        "log_type error\nlog_type warning\n"
        "log_dest stdout\n"
    )


def resolve_kind(kind: BrokerKind, mosquitto: str | None) -> Literal["mosquitto", "amqtt"]:
    """Which broker ``kind`` means given ``mosquitto`` (its path on PATH, or None).

    ``auto`` is mosquitto when installed, else amqtt with a warning; an explicit kind
    is never silently replaced.
    """
    if kind == "mosquitto" and mosquitto is None:
        raise ConfigError(
            "broker_kind=mosquitto but mosquitto is not on PATH (apt install mosquitto); "
            "--broker-kind amqtt uses the embedded broker"
        )
    if mosquitto is not None and kind != "amqtt":
        return "mosquitto"
    try:
        import amqtt  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("mosquitto (apt) or amqtt", "sim") from exc
    if kind == "auto":
        log.warning(
            "mosquitto not found on PATH: using the embedded amqtt broker (several times "
            "slower; it delivers nothing on $share subscriptions, so agents with a "
            "share_group starve)"
        )
    return "amqtt"


def start_broker(
    procs: ProcessSet, workdir: Path, kind: BrokerKind = "auto", *, extra_conf: str = ""
) -> tuple[Managed, int]:
    """Start a broker on a free loopback port; returns (process, port).

    Not ready yet when this returns: await :func:`wait_broker`.
    """
    port = free_port()
    exe = shutil.which("mosquitto")
    if resolve_kind(kind, exe) == "mosquitto" and exe is not None:
        conf = workdir / "mosquitto.conf"
        # extra_conf: e.g. the stack's generated password_file/acl_file (mosquitto only).
        conf.write_text(mosquitto_config(port) + extra_conf)
        return procs.spawn("mosquitto", [exe, "-c", str(conf)]), port
    argv = [sys.executable, "-m", "simulators.amqtt_broker", str(port), "127.0.0.1"]
    return procs.spawn("amqtt", argv), port


async def mqtt_handshake(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> int | None:
    """The CONNACK return code for a clean anonymous CONNECT, None if there was none.

    Stronger than an open port: it proves the broker's auth config admits our clients.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(connect_frame(f"fleet-sim-probe-{os.getpid()}", keepalive=5))
        await writer.drain()
        replies = ReplyParser()
        while replies.connack is None:
            data = await asyncio.wait_for(reader.read(64), timeout_s)
            if not data:
                return None
            replies.feed(data)
        writer.write(DISCONNECT)
        await writer.drain()
        return replies.connack
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()


async def wait_broker(proc: Managed, port: int, limit_s: float) -> None:
    """Until the broker completes an MQTT handshake; fails fast if it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if not proc.alive():
            raise StackError(
                f"{proc.name} exited with code {proc.proc.returncode} before it was ready; "
                f"last log lines:\n{proc.log_tail()}"
            )
        code = await mqtt_handshake(port)
        if code == 0:
            log.info("%s is ready on port %d", proc.name, port)
            return
        if code is not None:
            raise StackError(f"{proc.name} refused an anonymous CONNECT (code {code})")
        await asyncio.sleep(0.1)
    raise Unavailable(f"{proc.name} not ready after {limit_s:.0f}s:\n{proc.log_tail()}")
