"""``offload-server``: the cloud inference tier (KServe V2 gRPC over a model repository)."""

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offload-server",
        description="KServe V2 / Triton inference server (gRPC and HTTP/REST) for a "
        "Triton-layout ONNX repository. "
        "Every flag also reads OFFLOAD_<FLAG> from the environment; flags win.",
    )
    p.add_argument("--repository", help="model repository: <dir>/<name>/<version>/model.onnx")
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 = all interfaces)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument(
        "--http-port", type=int, help="KServe V2 HTTP/REST + /healthz, /readyz (8000; -1 = off)"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002; -1 = off)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--max-batch", type=int, help="max rows per batch (default 64)")
    p.add_argument("--max-queue-delay-us", type=int, help="batcher wait for a fuller batch")
    p.add_argument("--max-queue", type=int, help="queued requests per model version (default 4096)")
    p.add_argument("--workers", type=int, help="inference threads (default 2)")
    p.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per batch")
    p.add_argument(
        "--max-message-bytes", type=int, help="largest gRPC message / HTTP body (default 8 MiB)"
    )
    p.add_argument(
        "--max-inflight-bytes",
        type=int,
        help="request bytes admitted at once, beyond: RESOURCE_EXHAUSTED (default 128 MiB)",
    )
    p.add_argument(
        "--max-stream-pending", type=int, help="requests in progress per stream (default 256)"
    )
    p.add_argument("--grace-s", type=float, help="drain time on SIGTERM (default 10)")
    p.add_argument("--tls-cert", help="server certificate (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-ca", help="client CA (PEM): requires mutual TLS")
    p.add_argument(
        "--admin-token-file", help="admin bearer tokens, one per line: may load/unload models"
    )
    p.add_argument(
        "--admin-subjects",
        help="comma-separated client-certificate CNs that may load/unload models (mutual TLS)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
        print(f"offload-server: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
