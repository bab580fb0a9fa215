"""What fleet-sim reads from the running stack: agent CPU time and agents' /api/status."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import aiohttp
import psutil

from simulators.stack import Stack

log = logging.getLogger(__name__)


class CpuMeter:
    """CPU seconds (user+sys) of a set of pids between start and stop; survives restarts."""

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                self.base.setdefault(pid, t.user + t.system)
                self.last[pid] = t.user + t.system

    def seconds(self) -> float:
        return sum(self.last[p] - self.base[p] for p in self.last)


async def agent_status(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each live agent's ``/api/status`` (totals, routes, reasons, node) at the end of a run."""
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for a in stack.agents:
            try:
                async with http.get(f"{a.url}/api/status") as resp:
                    if resp.status == 200:
                        out[a.agent_id] = await resp.json()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("no status from %s: %s", a.agent_id, exc)
    return out
