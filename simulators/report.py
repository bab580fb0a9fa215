"""The report folder of a run: summary.md, raw.json and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.errors import MissingDependency
from simulators.capacity import describe
from simulators.runner import RunResult, write_raw


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def broker_line(broker: dict[str, Any]) -> str:
    """The summary's first line: which broker carried the run, and what that means for the
    numbers (the README's figures are measured on mosquitto)."""
    if broker["kind"] != "amqtt":
        return str(broker["kind"])
    line = "embedded amqtt (mosquitto not used): numbers are not comparable to the README's"
    if broker.get("scaled_from"):
        line += f"; load scaled to {broker['sensors']:,} of {broker['scaled_from']:,} sensors"
    return line + "; install mosquitto for the full load"


def summary_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) pairs shared by summary.md and the terminal table."""
    lat, loss = f["latency_ms"], f["loss"]
    rows = []
    broker = f.get("broker")
    if broker:
        rows.append(("broker", broker_line(broker)))
    if f.get("edge_capacity"):
        rows.append(("local capacity per agent", describe(f["edge_capacity"])))
    rows += [
        ("readings published / seen by agents",
         f"{f['readings_published']:,} / {f.get('agent_readings', 0):,}"),
        ("results received", f"{f['results']:,}"),
        ("windows expected / received", f"{loss['expected']:,} / {loss['received']:,}"),
        ("lost / duplicates", f"{loss['missing']:,} / {loss['duplicates']:,}"),
        ("latency p50 / p95 / p99 / max (ms)",
         " / ".join(_ms(lat[k]) for k in ("p50", "p95", "p99", "max"))),
        (f"SLO attainment (<= {f['slo_ms']:.0f} ms end to end)", _pct(f["slo_attainment"])),
        ("agent-reported deadline met", _pct(f["agent_deadline_met"])),
        ("offload share", _pct(f["offload_share"])),
        ("throughput (results/s)", f"{f['throughput_per_s']:.0f}"),
        ("edge CPU s per 1,000 inferences", f"{f.get('edge_cpu_s_per_1k', 0.0):.3f}"),
        ("bytes to cloud / from cloud",
         f"{f.get('wan_bytes_up', 0):,} / {f.get('wan_bytes_down', 0):,}"),
        ("result versions", ", ".join(f"{k}: {v:,}" for k, v in sorted(f["versions"].items()))),
    ]  # fmt: skip
    if f.get("detection"):
        d = f["detection"]
        rows.append(
            (
                "anomaly detection (faulty / healthy windows)",
                f"recall {_pct(d['recall'])} of {d['faulty_windows']:,}, "
                f"false alarms {_pct(d['false_alarm_rate'])} of {d['healthy_windows']:,}",
            )
        )
    if f.get("burst"):
        b = f["burst"]
        rows.append(
            (
                f"burst {b['window_s'][0]:.0f}-{b['window_s'][1]:.0f} s",
                f"offload {_pct(b['offload_share'])}, SLO {_pct(b['slo_attainment'])}",
            )
        )
    return rows


def summary_markdown(result: RunResult, plots: list[str]) -> str:
    f, sc = result.figures, result.scenario
    lines = [
        f"# fleet-sim report: {sc.name}",
        "",
        sc.description,
        "",
        f"{sc.stack.agents} agents, {sc.sensors.count} sensors at {sc.sensors.rate_hz} Hz "
        f"({sc.sensors.shape.kind}), policy `{sc.stack.policy}`, SLO {sc.stack.slo_ms:.0f} ms, "
        f"WAN {sc.stack.wan.delay_ms:.0f} ms one way, {sc.duration_s:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in summary_rows(f)),
        "",
        "## Checks",
        "",
        *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in result.checks.items()),
        "",
        "## Agents (versions from the last heartbeat)",
        "",
        *(f"- {a}: {m}" for a, m in sorted(f["agent_versions"].items())),
        "",
        "## Events",
        "",
        *(f"- t={e['t']:.1f}s {e['kind']} {_detail(e)}" for e in f["events"]),
        "",
        "## Rollouts",
        "",
        *(f"- {r}" for r in f["rollouts"]),
        "",
        "## Plots",
        "",
        *(f"![{p}]({p})" for p in plots),
        "",
    ]
    return "\n".join(lines)


def _detail(e: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "kind"))


def plot(result: RunResult, out: Path) -> list[str]:
    """Four PNGs from the time buckets; returns their file names."""
    # matplotlib is in the [sim] extra only (the container images leave it out).
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependency("matplotlib", "sim") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result.figures
    b = [x for x in f["buckets"] if x["results"]]
    if not b:
        return []
    t = [x["t"] for x in b]
    names = []

    fig, ax = plt.subplots(figsize=(8, 4))
    for key in ("p50", "p95", "p99"):
        ax.plot(t, [x[key] for x in b], label=key)
    ax.axhline(f["slo_ms"], color="red", linestyle="--", label="SLO")
    ax.set(xlabel="s", ylabel="end-to-end latency (ms)", title="Latency percentiles")
    ax.set_yscale("log")
    ax.legend()
    names.append(_save(fig, out, "latency.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [100 * x["offload_share"] for x in b], label="offload share")
    ax.plot(t, [100 * x["slo_attainment"] for x in b], label="SLO attainment")
    ax.set(xlabel="s", ylabel="%", title="Offload share and SLO attainment", ylim=(-2, 102))
    ax.legend()
    names.append(_save(fig, out, "offload.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    bucket = result.scenario.bucket_s
    ax.plot(t, [x["results"] / bucket for x in b], label="results/s")
    sent = f.get("sensor_rate_per_s") or []
    ax.plot(range(len(sent)), [s / 10 for s in sent], label="readings/s / 10")
    ax.set(xlabel="s", ylabel="per second", title="Throughput")
    ax.legend()
    names.append(_save(fig, out, "throughput.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    versions = sorted({v for x in b for v in x.get("versions", {})})
    bottom = [0.0] * len(b)
    for v in versions:
        share = [100 * x["versions"].get(v, 0) / x["results"] for x in b]
        ax.bar(t, share, bottom=bottom, width=bucket, label=v)
        bottom = [a + s for a, s in zip(bottom, share, strict=True)]
    ax.set(xlabel="s", ylabel="% of results", title="Model versions serving")
    ax.legend()
    names.append(_save(fig, out, "versions.png"))
    return names


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def write_report(result: RunResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_raw(out / "raw.json", result)
    plots = plot(result, out)
    (out / "summary.md").write_text(summary_markdown(result, plots))
    return out
