"""The embedded amqtt broker, run as a child: ``python -m simulators.amqtt_broker PORT [HOST]``.

The fallback when mosquitto is not installed (see :func:`simulators.broker.start_broker`).
amqtt's defaults are wrong for a local load test, so the config here replaces them:

- plugins: the defaults log every event and every packet (a coroutine per packet even
  when the log level drops it) and publish ``$SYS`` topics every 20 s; only an auth
  plugin is loaded, so the per-message path stays as short as amqtt allows;
- auth: amqtt's ``AnonymousAuthPlugin`` marks every session anonymous, and amqtt never
  queues QoS-1 messages for a disconnected anonymous session (nor keeps its
  subscriptions), even with ``clean_session=False``. :class:`OpenAuthPlugin` accepts
  every client *without* that mark, so an edge agent's persistent session survives a
  restart like it does on mosquitto with ``allow_anonymous true``;
- loopback bind, no connection cap, no session expiry (mosquitto's defaults too).

Message size is not capped by amqtt (mosquitto's default is 256 MB), so nothing to set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class OpenAuthPlugin(BaseAuthPlugin):
    """Accepts every client and keeps its session non-anonymous (see the module doc)."""

    async def authenticate(self, *, session: Session) -> bool | None:
        return True


def broker_config(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """amqtt 0.12 ``BrokerConfig`` as a dict (``plugins`` replaces the default set)."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        # By module path, not __name__: under ``-m`` that is "__main__".
        "plugins": {"simulators.amqtt_broker.OpenAuthPlugin": {}},
    }


async def serve(port: int, host: str = "127.0.0.1") -> None:
    broker = Broker(broker_config(port, host))
    await broker.start()
    print(f"amqtt broker listening on {host}:{port}", flush=True)
    # SIGTERM's default action ends the process: nothing here is worth a graceful exit.
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or not args[0].isdigit():
        print("usage: python -m simulators.amqtt_broker PORT [HOST]", file=sys.stderr)
        return 2
    # amqtt logs every connection at INFO: at thousands of sensors that is the bottleneck.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(int(args[0]), args[1] if len(args) > 1 else "127.0.0.1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
