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
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.settings import EdgeSettings
from models.errors import EdgecloudError


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _arg_kwargs(annotation: Any) -> dict[str, Any]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = (
        args[0] if typing.get_origin(annotation) in (typing.Union, type(int | None)) else annotation
    )
    if typing.get_origin(base) is typing.Literal:
        return {"choices": list(typing.get_args(base))}
    if base is bool:
        return {"type": _parse_bool, "metavar": "BOOL"}
    if base in (int, float, Path):
        return {"type": base}
    return {"type": str}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge inference agent: MQTT readings -> windows -> batched local or "
        "offloaded inference -> results. Every flag also reads EDGE_<FLAG> from the environment.",
    )
    for name, field in EdgeSettings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=field.description,
            **_arg_kwargs(field.annotation),
        )
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> EdgeSettings:
    ns = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(ns).items() if v is not None}
    secrets = os.environ.get("EDGE_SECRETS_DIR")
    return EdgeSettings(_secrets_dir=secrets, **overrides)  # type: ignore[call-arg]


async def _run(settings: EdgeSettings) -> int:
    from edge_agent.agent import EdgeAgent

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
        manifest, _ = agent.models.active
        print(
            f"edge-agent ready agent_id={settings.agent_id} model={manifest.ref} "
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
        print(f"edge-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
