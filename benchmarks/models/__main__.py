"""Backend overhead and thread scaling for the built-in models, side by side in one run.

Baseline: a bare ``onnxruntime.InferenceSession`` with ORT's default threading. Compared:
``OrtBackend`` (our input checks + dtype handling) at 1 and 2 intra-op threads. Payload:
random FP32 windows of each model's input shape; batch sizes 1, 8, 64, 256; ONNX Runtime
CPU. Writes JSON next to the table. Usage: ``python -m benchmarks.models [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.backends import BackendOptions
from models.backends.onnxruntime import OrtBackend
from models.recipes import build_all

BATCHES = (1, 8, 64, 256)


def _time(fn: Callable[[], object], budget_s: float) -> tuple[float, float, int]:
    for _ in range(3):
        fn()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 20:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    arr = np.array(times) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), len(times)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("benchmark-models.json"))
    parser.add_argument("--budget-s", type=float, default=0.3, help="time per cell")
    parser.add_argument("--out", type=Path, default=None, help="reuse a build directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        result = build_all(args.out or Path(tmp))
        rows = []
        for name in result.manifests:
            path = result.repository / name / "1" / "model.onnx"
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            engines: dict[str, Callable[[dict[str, np.ndarray]], object]] = {
                "ort-session(default)": lambda feeds, s=session: s.run(None, feeds),
            }
            for threads in (1, 2):
                backend = OrtBackend(path, BackendOptions(intra_op_threads=threads))
                engines[f"OrtBackend(intra={threads})"] = backend.infer
            spec = OrtBackend(path).inputs[0]
            for batch in BATCHES:
                x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:]))
                feeds = {spec.name: x.astype(np.float32)}
                base = None
                for engine, fn in engines.items():
                    p50, p99, n = _time(lambda fn=fn, feeds=feeds: fn(feeds), args.budget_s)
                    base = base or p50
                    rows.append(
                        {
                            "model": name,
                            "engine": engine,
                            "batch": batch,
                            "p50_ms": round(p50, 4),
                            "p99_ms": round(p99, 4),
                            "samples_per_s": round(batch / p50 * 1e3, 1),
                            "vs_baseline": round(p50 / base, 2),
                            "runs": n,
                        }
                    )
    header = f"{'model':<18} {'engine':<22} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} "
    header += f"{'samples/s':>11} {'x base':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<18} {r['engine']:<22} {r['batch']:>5} {r['p50_ms']:>9.4f} "
            f"{r['p99_ms']:>9.4f} {r['samples_per_s']:>11.0f} {r['vs_baseline']:>7.2f}"
        )
    machine = f"{platform.machine()} {os.cpu_count()} cpus, onnxruntime {ort.__version__}"
    print(f"\nmachine: {machine} (shared; compare ratios, not absolute times)")
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
