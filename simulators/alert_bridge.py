"""Example bridge: edge alerts over MQTT -> Prometheus Alertmanager's v2 API.

    python -m simulators.alert_bridge --broker mqtt://127.0.0.1:1883 \\
        --alertmanager http://127.0.0.1:9093

Subscribes to ``{prefix}alerts/#`` and POSTs each alert (``edge_agent.output.alerts.Alert``)
to ``{alertmanager}/api/v2/alerts`` as a ``postableAlert``:

* labels (Alertmanager's identity, so these dedupe): ``alertname`` (``EdgeAnomaly`` or
  ``EdgeClassChange``), ``severity``, ``site``, ``device``, ``stream`` and the alert's
  stable ``key``. The agent is an annotation, not a label: a stream that moves to
  another agent is still the same alert.
* ``startsAt`` is the condition's ``starts_at``; a ``resolved`` alert carries ``endsAt``
  = its ``ts``, which resolves it in Alertmanager. A one-shot ``info`` event (a class
  change) gets ``endsAt`` = ``ts`` + ``--info-hold-s``.
* Alertmanager resolves a firing alert nobody re-sends after its ``resolve_timeout``,
  so the bridge re-posts every alert still firing each ``--repeat-s`` (the documented
  contract for Alertmanager clients).

Bad messages on the topic are counted and logged in one line, never forwarded. The
bridge is an example of the alert contract, deliberately small: one process, no queue
to disk (Alertmanager itself deduplicates what a restart re-sends).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.alerts import Alert
from bus.broker import BrokerUrl, make_client
from shell.cli import add_settings_arguments, given

log = logging.getLogger(__name__)

ALERTNAME = {"anomaly": "EdgeAnomaly", "class-change": "EdgeClassChange"}


class BridgeSettings(BaseSettings):
    """Configuration of one alert bridge process (flags ``--foo-bar``, env ``ALERT_BRIDGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="ALERT_BRIDGE_", extra="ignore")

    broker: str = Field(default="mqtt://127.0.0.1:1883", description="MQTT broker URL.")
    alertmanager: str = Field(
        default="http://127.0.0.1:9093", description="Alertmanager base URL (POSTs /api/v2/alerts)."
    )
    topic_prefix: str = Field(default="", description="Topic prefix of the deployment.")
    repeat_s: float = Field(
        default=60.0, gt=0, description="Re-post still-firing alerts this often."
    )
    info_hold_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a one-shot class change stays active.",
    )
    generator_url: str = Field(
        default="",
        description="Link shown in Alertmanager; empty: none.",
    )


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_postable(alert: Alert, *, info_hold_s: float, generator_url: str = "") -> dict[str, Any]:
    """One Alertmanager v2 ``postableAlert`` for ``alert``."""
    body: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME[alert.kind],
            "severity": alert.severity,
            "site": alert.site,
            "device": alert.device,
            "stream": alert.stream,
            "key": alert.key,
        },
        "annotations": {
            "summary": f"{alert.kind} on {alert.site}/{alert.device}/{alert.stream}",
            "description": alert.detail or "",
            "agent": alert.agent,
            "seq": str(alert.seq),
        },
        "startsAt": rfc3339(alert.starts_at),
    }
    if alert.value is not None:
        body["annotations"]["value"] = f"{alert.value:.6g}"
    if alert.state == "resolved":
        body["endsAt"] = rfc3339(max(alert.ts, alert.starts_at))
    elif alert.severity == "info":
        body["endsAt"] = rfc3339(alert.ts + info_hold_s)
    if generator_url:
        body["generatorURL"] = generator_url
    return body


class Bridge:
    """Turns alert messages into Alertmanager posts; remembers what is still firing."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.firing: dict[str, dict[str, Any]] = {}  # key -> postable, anomalies only
        self.rejected = 0
        self.forwarded = 0

    def handle(self, payload: bytes) -> dict[str, Any] | None:
        """The postable for one MQTT message, or None for a bad one (counted)."""
        try:
            alert = Alert.model_validate_json(payload)
        except ValidationError as exc:
            self.rejected += 1
            log.warning("ignoring bad alert message: %s", str(exc).splitlines()[0][:200])
            return None
        s = self.settings
        body = to_postable(alert, info_hold_s=s.info_hold_s, generator_url=s.generator_url)
        if alert.state == "firing" and alert.severity != "info":
            self.firing[alert.key] = body
        else:
            self.firing.pop(alert.key, None)
        return body


async def post(session: aiohttp.ClientSession, base: str, alerts: list[dict[str, Any]]) -> None:
    async with session.post(base.rstrip("/") + "/api/v2/alerts", json=alerts) as resp:
        if resp.status >= 300:
            text = (await resp.text())[:200]
            log.warning("Alertmanager answered %d: %s", resp.status, text)


async def run(settings: BridgeSettings, stop: asyncio.Event) -> Bridge:
    """Forward alerts until ``stop`` is set; returns the bridge (its counters)."""
    bridge = Bridge(settings)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)
    url = BrokerUrl.parse(settings.broker)
    topic = f"{settings.topic_prefix.rstrip('/')}/alerts/#".lstrip("/")
    client = make_client(url, f"alert-bridge-{id(bridge):x}")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:  # paho's thread
        loop.call_soon_threadsafe(_offer, msg.payload)

    def _offer(payload: bytes) -> None:
        if queue.full():
            bridge.rejected += 1  # Alertmanager down for long: drop, do not grow
            return
        queue.put_nowait(payload)

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(topic, 1)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            next_repeat = loop.time() + settings.repeat_s
            while not stop.is_set():
                batch: list[bytes] = []
                try:
                    # Short waits so a stop is noticed; the repeat deadline bounds them too.
                    async with asyncio.timeout(min(0.5, max(0.0, next_repeat - loop.time()))):
                        batch.append(await queue.get())
                        while not queue.empty():
                            batch.append(queue.get_nowait())
                except TimeoutError:
                    pass
                bodies = [b for p in batch if (b := bridge.handle(p)) is not None]
                if loop.time() >= next_repeat:
                    bodies += [b for b in bridge.firing.values() if b not in bodies]
                    next_repeat = loop.time() + settings.repeat_s
                if bodies:
                    try:
                        await post(session, settings.alertmanager, bodies)
                        bridge.forwarded += len(bodies)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("cannot reach Alertmanager: %s", exc)
    finally:
        client.disconnect()
        client.loop_stop()
    return bridge


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.alert_bridge",
        description="Forward edge alerts (MQTT) to Prometheus Alertmanager's v2 API.",
    )
    add_settings_arguments(parser, BridgeSettings)
    settings = BridgeSettings(**given(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
