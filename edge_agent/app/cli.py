"""``edge-agent`` command line: every flag ``--foo-bar`` is the settings field ``foo_bar``.

Flags are generated from :class:`EdgeSettings` so the two can never drift; a flag given
on the command line overrides the ``EDGE_`` environment.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from edge_agent.app.settings import EdgeSettings
from models.errors import EdgecloudError
from shell.cli import add_settings_arguments, given
from shell.logs import setup_logging
from shell.settings_errors import describe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge inference agent: MQTT readings -> windows -> batched local or "
        "offloaded inference -> results. Every flag also reads EDGE_<FLAG> from the environment.",
    )
    add_settings_arguments(parser, EdgeSettings)
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> EdgeSettings:
    ns = build_parser().parse_args(argv)
    secrets = os.environ.get("EDGE_SECRETS_DIR")
    return EdgeSettings(_secrets_dir=secrets, **given(ns))  # type: ignore[call-arg]


async def _run(settings: EdgeSettings) -> int:
    from edge_agent.app.agent import EdgeAgent

    t0 = time.monotonic()
    # The MQTT thread and the event loop both run Python; the default 5 ms GIL switch
    # interval would add up to 5 ms per hand-off between them.
    sys.setswitchinterval(0.0005)
    agent = EdgeAgent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except BaseException:
        # Tear down what did start, but never let a shutdown problem hide why start failed.
        try:
            await agent.stop()
        except Exception:
            logging.getLogger(__name__).debug("cleanup after failed start", exc_info=True)
        raise
    # Startup leaves ~80k long-lived objects (aiohttp, gRPC, numpy, prometheus, ...). Every
    # full collection would walk them all: a measured 20-36 ms stall of the MQTT thread,
    # i.e. of every reading in flight. Freezing moves them out of the collector's sight.
    gc.collect()
    gc.freeze()
    try:
        served = ",".join(f"{name}:{p.version}" for name, p in agent.pipelines.items()) or "-"
        print(
            f"edge-agent ready agent_id={settings.agent_id} model={served} "
            f"broker_connected={agent.broker_connected} http=http://{settings.http_host}:"
            f"{agent.http_port} policy={settings.policy} startup_s={time.monotonic() - t0:.3f}",
            flush=True,
        )
        await stop.wait()
    finally:
        await agent.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(f"edge-agent: invalid configuration: {describe(exc)}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_run(settings))
    except EdgecloudError as exc:
        print(f"edge-agent: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the HTTP port is taken, the db path is not writable
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
