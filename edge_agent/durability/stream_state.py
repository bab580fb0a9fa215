"""Stream state across graceful restarts: the open windows and sequence positions.

A QoS-1 reading is acknowledged once it is in a window. On SIGTERM the agent stops
reading, answers everything queued, and saves each stream's last ``window`` rows with its
``next_seq`` (and the readings held for missing ones, :mod:`edge_agent.ingest.reorder`);
on start it restores them, so windows spanning the restart are still
produced and a missing ``seq`` after the restart is detected as a gap. A crash skips all
of this; for QoS-1 readings :mod:`edge_agent.durability.journal` covers it (restored after
this file, so its newer state wins for the streams it journals).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_agent.ingest.core import AgentCore

log = logging.getLogger(__name__)


def save_streams(core: AgentCore, path: Path) -> int:
    """Write every stream's window state to ``path`` atomically; returns the stream count."""
    topics: list[str] = []
    meta: list[list[int]] = []
    arrays: dict[str, Any] = {}
    held: list[list[int]] = []
    for i, (topic, st) in enumerate(core.streams.items()):
        rows, nxt, run_start, since, fill = st.export()
        topics.append(topic)
        meta.append([nxt, run_start, since, fill])
        arrays[f"r{i}"] = rows
        for h in st.held():  # acknowledged readings still waiting for missing ones
            arrays[f"h{len(held)}"] = np.frombuffer(h.payload, dtype=np.uint8)
            held.append([i])
    header = {"topics": topics, "meta": meta, "held": held, "signature": core.signature()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    os.replace(tmp, path)
    return len(topics)


def load_streams(core: AgentCore, path: Path) -> int:
    """Restore streams saved for the same window/hop/channels; returns how many."""
    if not path.is_file():
        return 0
    try:
        with np.load(path) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("signature") != core.signature():
                log.info("saved stream state is for another model layout; starting fresh")
                return 0
            for i, topic in enumerate(header["topics"]):
                st = core.stream_for(topic)
                if st is not None:
                    st.restore(data[f"r{i}"], *header["meta"][i])
            now = time.monotonic()
            for k, (i,) in enumerate(header.get("held", [])):
                core.ingest(header["topics"][i], data[f"h{k}"].tobytes(), now, hold=True)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot restore stream state from %s: %s", path, exc)
        return 0
    return len(header["topics"])
