"""The supervisor's /metrics merge and the --processes setting (no processes started)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from offload.cli import build_parser
from offload.merged_metrics import merge_expositions, sample_total
from offload.settings import OffloadSettings

WORKER = """# HELP nv_inference_count Number of inferences
# TYPE nv_inference_count counter
nv_inference_count{{model="a",version="1"}} {n}
# HELP offload_requests_total Inference requests by outcome
# TYPE offload_requests_total counter
offload_requests_total{{code="OK",model="a",version="1"}} {n}.0
# HELP offload_requests_created Inference requests by outcome
# TYPE offload_requests_created gauge
offload_requests_created{{code="OK",model="a",version="1"}} {created}
# HELP offload_batch_size Rows per executed batch
# TYPE offload_batch_size histogram
offload_batch_size_bucket{{le="1.0",model="a",version="1"}} {n}.0
offload_batch_size_bucket{{le="+Inf",model="a",version="1"}} {n}.0
offload_batch_size_sum{{model="a",version="1"}} 1.5
# HELP offload_models_ready Model versions loaded and ready
# TYPE offload_models_ready gauge
offload_models_ready {ready}.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{{implementation="CPython",major="3"}} 1.0
"""


def test_counters_and_histograms_are_summed_per_process_families_labelled() -> None:
    w0 = WORKER.format(n=3, created="1700000010.0", ready=2, cpu="1.25")
    w1 = WORKER.format(n=4, created="1700000000.0", ready=1, cpu="0.5")
    merged = merge_expositions([("0", w0), ("1", w1)])
    lines = merged.splitlines()
    # Triton's families keep their names and integer values.
    assert 'nv_inference_count{model="a",version="1"} 7' in lines
    assert 'offload_requests_total{code="OK",model="a",version="1"} 7.0' in lines
    assert 'offload_batch_size_bucket{le="+Inf",model="a",version="1"} 7.0' in lines
    assert 'offload_batch_size_sum{model="a",version="1"} 3.0' in lines
    assert 'offload_requests_created{code="OK",model="a",version="1"} 1.7e+09' in lines
    assert "offload_models_ready 1.0" in lines  # ready on every worker
    assert 'process_cpu_seconds_total{worker="0"} 1.25' in lines
    assert 'process_cpu_seconds_total{worker="1"} 0.5' in lines
    assert 'python_info{implementation="CPython",major="3",worker="1"} 1.0' in lines
    assert lines.count("# TYPE nv_inference_count counter") == 1
    assert sample_total(merged, "offload_requests_total") == 7


def test_processes_setting() -> None:
    assert OffloadSettings().processes == 1
    assert OffloadSettings().process_count() == 1
    args = build_parser().parse_args(["--processes", "3"])
    assert OffloadSettings(processes=args.processes).process_count() == 3
    auto = OffloadSettings(processes=build_parser().parse_args(["--processes", "auto"]).processes)
    assert 1 <= auto.process_count() <= len(os.sched_getaffinity(0))
    for bad in ("0", "many", "-1"):
        with pytest.raises(ValidationError):
            OffloadSettings(processes=bad)


def test_processes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_PROCESSES", "auto")
    assert OffloadSettings().processes == "auto"
    monkeypatch.setenv("OFFLOAD_PROCESSES", "2")
    assert OffloadSettings().processes == 2
