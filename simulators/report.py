"""The report folder of a run: summary.md, report.html, raw.json and PNG plots (matplotlib, Agg).

Plots share one x axis, "time since start (s)", and shade what happened when
(:mod:`simulators.story`: bursts, rollouts and their waves, outages, faults); summary.md and
report.html are the same content (:mod:`simulators.document`) with tables and human times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.errors import MissingDependency
from simulators import story
from simulators.capacity import describe
from simulators.document import Doc, human_duration, human_time
from simulators.runner import RunResult, write_raw
from simulators.story import Span


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


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items() if x is not None)
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v)
    return str(v)


def _detail(e: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={_value(v)}" for k, v in e.items() if k not in ("t", "kind") and v is not None
    )


def _rollout_rows(f: dict[str, Any], sc: Any) -> list[list[str]]:
    rows = []
    asked = {(r.model, r.version): r for r in sc.rollouts}
    for r in f.get("rollouts") or []:
        if not isinstance(r, dict):
            continue
        created, finished = r.get("created_at"), r.get("finished_at")
        took = (
            finished - created
            if isinstance(created, int | float) and isinstance(finished, int | float)
            else None
        )
        ro = asked.get((r.get("model"), r.get("version")))
        gates = _value(ro.gates) if ro is not None and ro.gates else "defaults"
        waves = ", ".join(ro.waves) if ro is not None else "-"
        rows.append([
            str(r.get("id", "-")), f"{r.get('model', '?')} v{r.get('version', '?')}",
            str(r.get("strategy") or (ro.strategy if ro else "-")), waves, gates,
            str(r.get("state", "-")), human_time(created), human_time(finished),
            human_duration(took), str(r.get("reason") or "-"),
        ])  # fmt: skip
    return rows


def _gate_rows(f: dict[str, Any]) -> list[list[str]]:
    """One row per agent verdict recorded when a wave passed or a rollout rolled back."""
    rows = []
    for r in f.get("rollouts") or []:
        if not isinstance(r, dict):
            continue
        for e in r.get("events") or []:
            if e.get("kind") not in ("wave-passed", "rolled-back"):
                continue
            detail = e.get("detail") or {}
            gate = detail.get("gate") or {}
            for agent, v in sorted((gate.get("verdicts") or {}).items()):
                v = v if isinstance(v, dict) else {}
                rows.append([
                    str(r.get("id", "-")), str(detail.get("wave", "-")), e["kind"],
                    human_time(e.get("ts")), agent, str(v.get("state", "-")),
                    str(v.get("gate") or "-"), str(v.get("reason") or "-"),
                ])  # fmt: skip
    return rows


def _event_rows(f: dict[str, Any]) -> list[list[str]]:
    start = f.get("start_unix")
    rows = []
    for e in f.get("events") or []:
        t = float(e.get("t", 0.0))
        wall = human_time(start + t) if isinstance(start, int | float) else "-"
        rows.append([f"{t:.1f}", wall, str(e.get("kind", "?")), _detail(e) or "-"])
    return rows


def report_doc(result: RunResult, plots: list[str], spans: list[Span] | None = None) -> Doc:
    """The report's content, once, for both summary.md and report.html."""
    f, sc = result.figures, result.scenario
    spans = story.spans(sc, f) if spans is None else spans
    doc = Doc()
    doc.h1(f"fleet-sim report: {sc.name}")
    doc.p(sc.description)
    doc.p(
        f"{sc.stack.agents} agents, {sc.sensors.count} sensors at {sc.sensors.rate_hz} Hz "
        f"({sc.sensors.shape.kind}), policy `{sc.stack.policy}`, SLO {sc.stack.slo_ms:.0f} ms, "
        f"WAN {sc.stack.wan.delay_ms:.0f} ms one way, {sc.duration_s:.0f} s"
        + (
            f", started {human_time(f['start_unix'])}."
            if isinstance(f.get("start_unix"), int | float)
            else "."
        )
    )
    doc.table(["figure", "value"], [[k, v] for k, v in summary_rows(f)])
    doc.h2("Checks")
    doc.bullets([f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in result.checks.items()])
    doc.h2("Timeline (shaded in the plots)")
    doc.table(
        ["what", "from (s)", "to (s)", "length"],
        [
            [s.label, f"{s.start:.1f}", f"{s.end:.1f}", human_duration(s.end - s.start)]
            for s in spans
        ],
        empty="no bursts, rollouts or faults",
    )
    doc.h2("Rollouts")
    doc.table(
        [
            "id",
            "model",
            "strategy",
            "waves",
            "gates",
            "state",
            "started",
            "finished",
            "took",
            "reason",
        ],
        _rollout_rows(f, sc),
        empty="no rollouts",
    )
    doc.h2("Gate verdicts")
    doc.table(
        ["rollout", "wave", "decision", "at", "agent", "verdict", "gate", "reason"],
        _gate_rows(f),
        empty="no gate evaluations recorded",
    )
    doc.h2("Events")
    doc.table(
        ["time since start (s)", "time", "event", "details"], _event_rows(f), empty="no events"
    )
    doc.h2("Agents (versions from the last heartbeat)")
    doc.table(
        ["agent", "serving"],
        [[a, _value(m)] for a, m in sorted((f.get("agent_versions") or {}).items())],
        empty="no heartbeats",
    )
    doc.h2("Plots")
    for name in plots:
        doc.image(name)
    return doc


def summary_markdown(result: RunResult, plots: list[str]) -> str:
    return report_doc(result, plots).markdown()


X_LABEL = "time since start (s)"


def shade(ax: Any, spans: list[Span]) -> list[dict[str, Any]]:
    """Shade ``spans`` on ``ax`` (one legend entry per category) and return what is drawn,
    read back from the axes' own artists, so tests check the plot rather than our intent."""
    labelled: set[str] = set()
    for s in spans:
        label = None if s.category in labelled else s.category
        labelled.add(s.category)
        gid = f"span:{s.category}:{s.label}"
        color = story.COLORS[s.category]
        if s.category == "wave":
            # Waves sit inside their rollout: a strip along the top, named, not a wash.
            ax.axvspan(s.start, s.end, ymin=0.93, ymax=1.0, color=color, alpha=0.7, lw=0,
                       label=label, gid=gid)  # fmt: skip
            ax.text((s.start + s.end) / 2, 0.965, s.label.replace("wave ", "w"), ha="center",
                    va="center", fontsize=7, transform=ax.get_xaxis_transform())  # fmt: skip
        else:
            ax.axvspan(s.start, s.end, color=color, alpha=0.15, lw=0, label=label, gid=gid)
    return drawn_spans(ax)


def drawn_spans(ax: Any) -> list[dict[str, Any]]:
    """The shaded spans on ``ax``: category, label and x extent of each drawn patch."""
    out = []
    for patch in ax.patches:
        gid = patch.get_gid() or ""
        if not gid.startswith("span:"):
            continue
        _, category, label = gid.split(":", 2)
        xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
        out.append({"category": category, "label": label,
                    "start": float(xs.min()), "end": float(xs.max())})  # fmt: skip
    return out


def plot(
    result: RunResult, out: Path, shaded: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Five PNGs from the time buckets; returns their file names. ``shaded`` (if given)
    receives, per file, its x label and the spans drawn on it (see :func:`drawn_spans`)."""
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
    spans = story.spans(result.scenario, f)
    record = shaded if shaded is not None else {}
    t = [x["t"] for x in b]
    names = []

    def finish(fig: Any, ax: Any, name: str) -> None:
        drawn = shade(ax, spans)
        ax.set_xlabel(X_LABEL)
        record[name] = {"xlabel": ax.get_xlabel(), "spans": drawn}
        ax.set_xlim(left=0)
        ax.legend(fontsize=8, loc="best")
        names.append(_save(fig, out, name))

    fig, ax = plt.subplots(figsize=(9, 4))
    for key in ("p50", "p95", "p99"):
        ax.plot(t, [x[key] for x in b], label=key)
    ax.axhline(f["slo_ms"], color="red", linestyle="--", label="SLO")
    ax.set(ylabel="end-to-end latency (ms)", title="Latency percentiles")
    ax.set_yscale("log")
    finish(fig, ax, "latency.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [100 * x["offload_share"] for x in b], label="offload share")
    ax.plot(t, [100 * x["slo_attainment"] for x in b], label="SLO attainment")
    ax.set(ylabel="%", title="Offload share and SLO attainment", ylim=(-2, 102))
    finish(fig, ax, "offload.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    bucket = result.scenario.bucket_s
    ax.plot(t, [x["results"] / bucket for x in b], label="results/s")
    sent = f.get("sensor_rate_per_s") or []
    ax.plot(range(len(sent)), [s / 10 for s in sent], label="readings/s / 10")
    ax.set(ylabel="per second", title="Throughput")
    finish(fig, ax, "throughput.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    versions = sorted({v for x in b for v in x.get("versions", {})})
    bottom = [0.0] * len(b)
    for v in versions:
        share = [100 * x["versions"].get(v, 0) / x["results"] for x in b]
        ax.bar(t, share, bottom=bottom, width=bucket, label=v)
        bottom = [a + s for a, s in zip(bottom, share, strict=True)]
    ax.set(ylabel="% of results", title="Model versions serving")
    finish(fig, ax, "versions.png")

    per_agent = _per_agent(result)
    if per_agent:
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        for agent, rows in sorted(per_agent.items()):
            at = [r[0] for r in rows]
            axes[0].plot(at, [r[1] / bucket for r in rows], label=agent)
            axes[1].plot(at, [r[2] for r in rows], label=agent)
            axes[2].plot(at, [100 * r[3] for r in rows], label=agent)
        axes[0].set(ylabel="results/s", title="Per agent")
        axes[1].set(ylabel="p95 latency (ms)")
        axes[1].set_yscale("log")
        axes[2].set(ylabel="offload share (%)", ylim=(-2, 102))
        for ax in axes[:2]:
            shade(ax, spans)
            ax.set_xlim(left=0)
        axes[0].legend(fontsize=8, loc="upper right")
        finish(fig, axes[2], "agents.png")
    return names


def _per_agent(result: RunResult) -> dict[str, list[tuple[float, int, float, float]]]:
    """Per agent, per bucket: (t, results, p95 ms, offload share) from the raw results."""
    import numpy as np

    cols = (result.raw or {}).get("results") or {}
    ts = np.asarray(cols.get("ts") or [], dtype=np.float64)
    if ts.size == 0 or not cols.get("agent"):
        return {}
    recv = np.asarray(cols["recv"], dtype=np.float64)
    agents = np.asarray(cols["agent"])
    cloud = np.asarray([r == "cloud" for r in cols["route"]], dtype=bool)
    start = result.figures.get("start_unix")
    start = float(start) if isinstance(start, int | float) else float(ts.min())
    bucket = result.scenario.bucket_s
    idx = np.clip(np.floor((ts - start) / bucket).astype(np.int64), 0, None)
    e2e = (recv - ts) * 1000.0
    out: dict[str, list[tuple[float, int, float, float]]] = {}
    for agent in np.unique(agents):
        mine = agents == agent
        rows = []
        for k in np.unique(idx[mine]):
            sel = mine & (idx == k)
            rows.append((float(k * bucket), int(sel.sum()), float(np.percentile(e2e[sel], 95)),
                         float(cloud[sel].mean())))  # fmt: skip
        out[str(agent)] = rows
    return out


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def write_report(result: RunResult, out: Path) -> Path:
    """``raw.json``, the plots, ``summary.md`` and ``report.html`` (plots inlined), and
    ``shaded.json``: the spans drawn on each plot, for tools and tests."""
    out.mkdir(parents=True, exist_ok=True)
    write_raw(out / "raw.json", result)
    shaded: dict[str, dict[str, Any]] = {}
    plots = plot(result, out, shaded)
    doc = report_doc(result, plots)
    (out / "summary.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(out, f"fleet-sim report: {result.scenario.name}"))
    (out / "shaded.json").write_text(json.dumps(shaded, indent=1))
    return out
