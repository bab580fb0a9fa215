"""The supervisor's ``/metrics``: every worker's exposition merged into one, plus its own.

Prometheus scrapes one endpoint per pod, so ``--processes N`` must look like one server:
a sample with the same name and labels in several workers is summed (request counters,
histogram buckets, durations, bytes in flight), which is what one process serving all
of those requests would have reported. The exceptions, and why:

* ``process_*`` and ``python_*`` describe one process (its start time, its memory): summing
  them means nothing, so each keeps its own series with a ``worker`` label ("0".., or
  "supervisor"). Summing ``process_cpu_seconds_total`` over that label is the pod's CPU.
* ``offload_models_ready`` takes the minimum: a version counts once every worker has it.
* ``*_created`` timestamps take the earliest.

The merge works on the text, not on parsed families, so Triton's ``nv_*`` counters keep
their exact names and integer rendering (prometheus_client's parser would rename them).
All workers run the same code, so the same series has the same label order everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

PER_PROCESS = ("process_", "python_")
LOWEST = frozenset({"offload_models_ready"})
WORKER_LABEL = "worker"


@dataclass
class _Family:
    header: list[str]
    kind: str
    #: sample head (``name{labels}``) -> (value, every input was an integer)
    samples: dict[str, tuple[float, bool]] = field(default_factory=dict)


def _with_worker(head: str, worker: str) -> str:
    label = f'{WORKER_LABEL}="{worker}"'
    name, brace, labels = head.partition("{")
    if not brace or labels == "}":
        return f"{name}{{{label}}}"
    return f"{name}{{{labels[:-1]},{label}}}"


def merge_expositions(parts: Sequence[tuple[str, str]]) -> str:
    """``(worker, exposition text)`` pairs -> one exposition (families in first-seen order)."""
    families: dict[str, _Family] = {}
    for worker, text in parts:
        current: _Family | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                words = line.split(" ", 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    name = words[2]
                    current = families.get(name)
                    if current is None:
                        current = families[name] = _Family([], "untyped")
                    if words[1] == "TYPE":
                        current.kind = words[3] if len(words) > 3 else "untyped"
                    if line not in current.header:
                        current.header.append(line)
                continue
            if current is None:  # a sample without a header: its own family
                current = families.setdefault(line.partition("{")[0], _Family([], "untyped"))
            head, _, raw = line.rpartition(" ")
            if not head:
                continue
            sample = head.partition("{")[0]
            value = float(raw)
            integral = raw.lstrip("-").isdigit()
            if sample.startswith(PER_PROCESS):
                current.samples[_with_worker(head, worker)] = (value, integral)
                continue
            seen = current.samples.get(head)
            if seen is None:
                current.samples[head] = (value, integral)
            elif sample.endswith("_created") or sample in LOWEST:
                current.samples[head] = (min(seen[0], value), seen[1] and integral)
            else:
                current.samples[head] = (seen[0] + value, seen[1] and integral)
    out: list[str] = []
    for family in families.values():
        out.extend(family.header)
        for head, (value, integral) in family.samples.items():
            shown = str(int(value)) if integral else floatToGoString(value)
            out.append(f"{head} {shown}")
    return "\n".join(out) + "\n"


def sample_total(text: str, name: str) -> float:
    """Sum of every sample called ``name`` in an exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rpartition(" ")[2])
    return total


class _PerWorkerRequests:
    """Requests each worker has answered, read from its last scrape: proves the kernel
    spreads connections (and shows when it does not)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, float]] = {}

    def update(self, worker: str, pid: int, requests: float) -> None:
        self._last[worker] = (pid, requests)

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "offload_worker_requests",
            "Inference requests answered by each worker process since it started",
            labels=(WORKER_LABEL, "pid"),
        )
        for worker, (pid, requests) in sorted(self._last.items()):
            family.add_metric((worker, str(pid)), requests)
        return [family]


class SupervisorMetrics:
    """The supervisor's own families and the merge of the workers' scrapes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.restarts = Counter(
            "offload_worker_restarts",
            "Worker processes the supervisor restarted after they exited unasked",
            (WORKER_LABEL,),
            registry=self.registry,
        )
        self.workers_ready = Gauge(
            "offload_workers_ready",
            "Worker processes serving (the supervisor is ready when all are)",
            registry=self.registry,
        )
        self.workers = Gauge(
            "offload_workers", "Worker processes configured (--processes)", registry=self.registry
        )
        self._per_worker = _PerWorkerRequests()
        self.registry.register(self._per_worker)  # type: ignore[arg-type]

    def exposition(self, scrapes: Sequence[tuple[int, int, str]]) -> bytes:
        """``(worker index, pid, exposition)`` of every worker that answered -> /metrics."""
        for index, pid, text in scrapes:
            self._per_worker.update(str(index), pid, sample_total(text, "offload_requests_total"))
        own = generate_latest(self.registry).decode()
        parts = [(str(index), text) for index, _, text in scrapes]
        return merge_expositions([*parts, ("supervisor", own)]).encode()
