"""A report as blocks, rendered twice: Markdown (summary.md) and one self-contained HTML file.

Building the content once keeps the two files saying the same thing; the HTML inlines
every plot as a base64 PNG so the file can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


def human_time(ts: float | None) -> str:
    """Unix seconds as ``2026-12-03 08:12:03 UTC`` ("-" when unknown)."""
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_duration(seconds: float | None) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    empty: str = "none"


@dataclass
class Doc:
    """Ordered blocks: ("h1"|"h2"|"p"|"list"|"table"|"img", payload)."""

    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h1(self, text: str) -> None:
        self.blocks.append(("h1", text))

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("list", items))

    def table(self, headers: list[str], rows: list[list[str]], empty: str = "none") -> None:
        self.blocks.append(("table", Table(headers, rows, empty)))

    def image(self, name: str) -> None:
        self.blocks.append(("img", name))

    # -- renderers -----------------------------------------------------------------------
    def markdown(self) -> str:
        out: list[str] = []
        for kind, payload in self.blocks:
            if kind == "h1":
                out += [f"# {payload}", ""]
            elif kind == "h2":
                out += [f"## {payload}", ""]
            elif kind == "p":
                out += [str(payload), ""]
            elif kind == "list":
                out += [f"- {item}" for item in payload] + [""]  # type: ignore[attr-defined]
            elif kind == "table":
                assert isinstance(payload, Table)
                if not payload.rows:
                    out += [f"_{payload.empty}_", ""]
                    continue
                out.append("| " + " | ".join(payload.headers) + " |")
                out.append("| " + " | ".join("---" for _ in payload.headers) + " |")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in payload.rows]
                out.append("")
            elif kind == "img":
                out += [f"![{payload}]({payload})", ""]
        return "\n".join(out)

    def html(self, images: Path, title: str) -> str:
        """One HTML page; ``img`` blocks are read from ``images`` and inlined."""
        e = html.escape
        body: list[str] = []
        for kind, payload in self.blocks:
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{e(str(payload))}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{e(str(payload))}</p>")
            elif kind == "list":
                items = "".join(f"<li>{e(str(i))}</li>" for i in payload)  # type: ignore[attr-defined]
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                assert isinstance(payload, Table)
                if not payload.rows:
                    body.append(f"<p><em>{e(payload.empty)}</em></p>")
                    continue
                head = "".join(f"<th>{e(h)}</th>" for h in payload.headers)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                    for row in payload.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode((images / str(payload)).read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{e(str(payload))}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{e(str(payload))}</figcaption></figure>"
                )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;"
    "padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}"
    "figure{margin:1em 0}img{max-width:100%}figcaption{color:#666;font-size:12px}"
)
