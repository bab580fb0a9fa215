"""``offload-server``: the cloud inference tier (KServe V2 gRPC and HTTP, one repository)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from models.errors import EdgecloudError
from offload.settings import OffloadSettings
from shell.cli import add_settings_arguments, given
from shell.logs import setup_logging
from shell.settings_errors import describe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offload-server",
        description="KServe V2 / Triton inference server (gRPC and HTTP/REST) for a "
        "Triton-layout ONNX repository. "
        "Every flag also reads OFFLOAD_<FLAG> from the environment; flags win.",
    )
    # One flag per settings field, generated (shell/cli.py), as for every other program.
    add_settings_arguments(p, OffloadSettings)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = given(args)
    try:
        settings = OffloadSettings(
            _secrets_dir=os.environ.get("OFFLOAD_SECRETS_DIR") or None,  # type: ignore[call-arg]
            **overrides,
        )
    except ValidationError as exc:
        print(f"offload-server: invalid settings: {describe(exc)}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format, stream=sys.stdout)
    # Lifecycle lines (the ready line a parent waits for) survive --log-level WARNING.
    logging.getLogger("offload.lifecycle").setLevel(logging.INFO)
    processes = settings.process_count()
    try:
        if processes > 1:
            from offload.supervisor import run as supervise

            return asyncio.run(supervise(settings, processes))
        from offload.server import run

        return asyncio.run(run(settings))
    except EdgecloudError as exc:
        logging.getLogger("offload").error("%s", exc.message)
        return 1
    except OSError as exc:
        logging.getLogger("offload").error("cannot start: %s", exc)
        return 1
