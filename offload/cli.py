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
from shell.cli import annotate_settings_help
from shell.logs import setup_logging
from shell.settings_errors import describe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offload-server",
        description="KServe V2 / Triton inference server (gRPC and HTTP/REST) for a "
        "Triton-layout ONNX repository. "
        "Every flag also reads OFFLOAD_<FLAG> from the environment; flags win.",
    )
    p.add_argument("--repository", help="model repository: <dir>/<name>/<version>/model.onnx")
    p.add_argument("--host", help="bind address (0.0.0.0 = every interface)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (0 picks a free one)")
    p.add_argument(
        "--http-port", type=int, help="KServe V2 HTTP/REST, /healthz, /readyz (-1 = off)"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus port (-1 = off)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--max-batch", type=int, help="max rows per batch")
    p.add_argument("--max-queue-delay-us", type=int, help="batcher wait for a fuller batch")
    p.add_argument("--max-queue", type=int, help="queued requests per model version")
    p.add_argument("--workers", type=int, help="inference threads")
    p.add_argument("--inline-max-us", type=int, help="run tiny batches on the event loop when idle")
    p.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per batch")
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message / HTTP body")
    p.add_argument(
        "--max-inflight-bytes",
        type=int,
        help="inference request bytes admitted at once; beyond: RESOURCE_EXHAUSTED",
    )
    p.add_argument("--max-stream-pending", type=int, help="requests in progress per stream")
    p.add_argument("--grace-s", type=float, help="drain time on SIGTERM in seconds")
    p.add_argument("--tls-cert", help="server certificate (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-ca", help="client CA (PEM): requires mutual TLS")
    p.add_argument("--admin-token-file", help="admin bearer tokens, one per line: may load/unload")
    p.add_argument(
        "--admin-subjects",
        help="comma-separated client-certificate CNs that may load/unload models (mutual TLS)",
    )
    p.add_argument("--otlp-endpoint", help="OpenTelemetry collector (OTLP/HTTP) for spans")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    p.add_argument("--log-format", help="text or json: one object per line")
    annotate_settings_help(p, OffloadSettings)  # default + env on every flag; no abbreviations
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
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
    from offload.server import run

    try:
        return asyncio.run(run(settings))
    except EdgecloudError as exc:
        logging.getLogger("offload").error("%s", exc.message)
        return 1
    except OSError as exc:
        logging.getLogger("offload").error("cannot start: %s", exc)
        return 1
