"""The stack's MQTT broker: mosquitto from PATH, or an embedded amqtt broker as fallback."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from models.errors import MissingDependency
from simulators.procs import Managed, ProcessSet

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


_AMQTT_MAIN = """
import asyncio, sys
from amqtt.broker import Broker

async def main(port):
    cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
           "auth": {"allow-anonymous": True}, "topic-check": {"enabled": False}}
    broker = Broker(cfg)
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def start_broker(procs: ProcessSet, workdir: Path) -> tuple[Managed, int]:
    """Start a broker on a free loopback port; returns (process, port)."""
    port = free_port()
    exe = shutil.which("mosquitto")
    if exe is not None:
        conf = workdir / "mosquitto.conf"
        conf.write_text(mosquitto_config(port))
        return procs.spawn("mosquitto", [exe, "-c", str(conf)]), port
    try:
        import amqtt  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("mosquitto (apt) or amqtt", "sim") from exc
    log.warning(
        "mosquitto not found on PATH: using the embedded amqtt broker (slower; it delivers "
        "nothing on $share subscriptions, so shared-subscription agents will starve)"
    )
    return procs.spawn("amqtt", [sys.executable, "-c", _AMQTT_MAIN, str(port)]), port
