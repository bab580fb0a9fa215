"""``python -m benchmarks.offload.rest``: KServe V2 REST vs gRPC infer, side by side.

offload-server over gRPC (the offload benchmark's load generator), over REST with Triton's
binary tensor extension and over REST with JSON tensors, against MLServer 1.7.1's REST
endpoint (JSON tensors: MLServer has no binary extension) on the same cells as the offload
benchmark. Same model, same closed-loop method: each request body is serialized once, a
client keeps N calls in flight for a fixed time, and every response is checked for its
status. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort

from benchmarks.offload.__main__ import _median_runs
from benchmarks.offload.loadgen import CellResult, run_cell
from benchmarks.offload.model import NAME, prepare_model
from benchmarks.offload.servers import (
    MLSERVER_PIP,
    Launched,
    install_venv,
    start_mlserver,
    start_offload,
    wait_ready,
)
from offload.codec import build_request

HEADER = "Inference-Header-Content-Length"
CELLS = ((1, 1), (1, 8), (32, 8))
KINDS = ("offload-grpc", "offload-rest-bin", "offload-rest-json", "mlserver-rest-json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.offload.rest", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is kept)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {KINDS}")
    p.add_argument("--mlserver-workers", type=int, default=0, help="MLServer parallel_workers")
    p.add_argument("--workers", type=int, default=2, help="offload-server --workers")
    p.add_argument("--workdir", type=Path, default=Path("var/bench/offload-rest"))
    p.add_argument("--out", type=Path, default=Path("reports/offload-rest-bench.json"))
    p.add_argument("--mlserver-venv", type=Path, default=Path("var/bench-venvs/mlserver"))
    p.add_argument("--install", action="store_true", help="create the MLServer venv first")
    return p


def rest_bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same request as REST bodies: binary extension and JSON tensors."""
    head = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    raw = json.dumps(head).encode()
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }
    return {
        "bin": (
            raw + x.tobytes(),
            {HEADER: str(len(raw)), "Content-Type": "application/octet-stream"},
        ),
        "json": (json.dumps(body).encode(), {"Content-Type": "application/json"}),
    }


async def run_rest_cell(
    url: str,
    server: str,
    body: bytes,
    headers: dict[str, str],
    batch: int,
    concurrency: int,
    seconds: float,
    warmup_s: float,
) -> CellResult:
    """Keep ``concurrency`` POSTs in flight on kept-alive connections for ``seconds``."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = 0.0

        async def worker() -> None:
            nonlocal errors
            perf = time.perf_counter
            while True:
                t0 = perf()
                if t0 >= stop_at:
                    return
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if not ok:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(perf() - t0)

        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        measuring, errors = True, 0
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return CellResult(
        server=server,
        batch=batch,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
    )


def _check_rest(
    url: str, bodies: dict[str, tuple[bytes, dict[str, str]]], want: np.ndarray
) -> None:
    """Each REST server must answer the JSON request with ONNX Runtime's outputs."""
    import urllib.request

    body, headers = bodies["json"]
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        doc = json.loads(response.read())
    got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(want.shape)
    if not np.allclose(got, want, atol=1e-5):
        raise RuntimeError(f"{url} returned wrong outputs")


async def _rounds(
    plan: list[tuple[str, Launched]],
    payloads: dict[int, bytes],
    bodies: dict[int, dict[str, tuple[bytes, dict[str, str]]]],
    args: argparse.Namespace,
) -> list[CellResult]:
    out = []
    for round_no in range(1, args.rounds + 1):
        for batch, conc in CELLS:
            for kind, launched in plan:
                if kind == "offload-grpc":
                    result = await run_cell(
                        launched.target, kind, payloads[batch], batch, conc, args.seconds,
                        args.warmup,
                    )  # fmt: skip
                else:
                    url = f"http://{launched.extra['http']}/v2/models/{NAME}/infer"
                    body, headers = bodies[batch]["bin" if kind.endswith("bin") else "json"]
                    result = await run_rest_cell(
                        url, kind, body, headers, batch, conc, args.seconds, args.warmup
                    )
                print(
                    f"  round {round_no} {kind:<19} batch {batch:>2} x {conc}: "
                    f"{result.req_per_s:7.0f} req/s  p50 {result.p50_ms:.2f} ms  "
                    f"err {result.errors}",
                    flush=True,
                )
                out.append(result)
    return out


def _table(results: list[CellResult]) -> list[str]:
    by = {(r.server, r.batch, r.concurrency): r for r in results}
    kinds = list(dict.fromkeys(r.server for r in results))
    head = "| protocol | batch | in flight | req/s | samples/s | p50 ms | p99 ms | errors "
    head += "| vs gRPC |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch, conc in CELLS:
        base = by.get(("offload-grpc", batch, conc))
        for kind in kinds:
            r = by.get((kind, batch, conc))
            if r is None:
                continue
            ratio = f"{r.req_per_s / base.req_per_s:.2f}x" if base and base.req_per_s else "-"
            lines.append(
                f"| {kind} | {batch} | {conc} | {r.req_per_s:,.0f} | {r.samples_per_s:,.0f} | "
                f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {ratio} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.install and "mlserver-rest-json" in kinds:
        install_venv(args.mlserver_venv, MLSERVER_PIP)
    repo, provenance = prepare_model(args.workdir)
    model_file = repo / NAME / "1" / "model.onnx"
    xs = {
        b: np.random.default_rng(b).standard_normal((b, 100, 6)).astype(np.float32)
        for b in sorted({b for b, _ in CELLS})
    }
    payloads = {
        b: build_request(NAME, None, {"input": x}).SerializeToString() for b, x in xs.items()
    }
    bodies = {b: rest_bodies(x) for b, x in xs.items()}
    want = ort.InferenceSession(str(model_file)).run(None, {"input": xs[1]})[0]
    notes: dict[str, str] = {}
    started: list[Launched] = []
    plan: list[tuple[str, Launched]] = []
    try:
        if any(k.startswith("offload") for k in kinds):
            offload = start_offload(repo, args.workdir, args.workers, 0, 200)
            started.append(offload)
            wait_ready(offload, NAME)
            _check_rest(f"http://{offload.extra['http']}/v2/models/{NAME}/infer", bodies[1], want)
            for kind in kinds:
                if kind.startswith("offload"):
                    plan.append((kind, offload))
                    notes[kind] = offload.note
        if "mlserver-rest-json" in kinds:
            try:
                ml = start_mlserver(
                    args.mlserver_venv, model_file, NAME, args.workdir, args.mlserver_workers
                )
                started.append(ml)
                wait_ready(ml, NAME)
                _check_rest(f"http://{ml.extra['http']}/v2/models/{NAME}/infer", bodies[1], want)
                plan.append(("mlserver-rest-json", ml))
                notes["mlserver-rest-json"] = ml.note
            except Exception as exc:  # a baseline that cannot run is reported, not fatal
                notes["mlserver-rest-json"] = f"skipped: {type(exc).__name__}: {str(exc)[:300]}"
                print(f"mlserver: {notes['mlserver-rest-json']}", flush=True)
        runs = asyncio.run(_rounds(plan, payloads, bodies, args))
    finally:
        for launched in started:
            launched.stop()
    results = _median_runs(runs)
    table = _table(results)
    print("\n" + "\n".join(table) + "\n")
    for kind, note in notes.items():
        print(f"{kind}: {note}")
    report = {
        "benchmark": "offload-rest",
        "command": "python -m benchmarks.offload.rest "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": provenance,
        "payload": "FP32 [batch, 100, 6]; gRPC raw contents, REST binary extension or JSON",
        "load_generator": "grpc.aio generic unary / aiohttp keep-alive POST, one process, "
        "closed loop",
        "machine": f"{platform.machine()} {platform.platform()} cpus={os.cpu_count()}",
        "seconds_per_cell": args.seconds,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "servers": notes,
        "rounds": args.rounds,
        "results": [r.as_dict() for r in results],
        "runs": [r.as_dict() for r in runs],
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
