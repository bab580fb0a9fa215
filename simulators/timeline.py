"""A scenario's timeline: faults and rollouts executed at their times against the stack."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models import signing
from models.recipes import build_model
from models.repository import ModelRepository
from simulators.gateway_client import GatewayClient
from simulators.probes import CpuMeter
from simulators.scenario import Fault, Rollout, Scenario
from simulators.stack import Stack

log = logging.getLogger(__name__)

_HOG = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


class Timeline:
    """Runs ``scenario.faults`` and ``scenario.rollouts``; times are seconds after ``t0``."""

    def __init__(
        self, sc: Scenario, workdir: Path, models_dir: Path, cpu: CpuMeter,
        event: Callable[..., None],
    ) -> None:  # fmt: skip
        self.sc = sc
        self.workdir = workdir
        self.models_dir = models_dir
        self.cpu = cpu
        self._event = event
        self.rollout_info: list[dict[str, Any]] = []
        self.t0 = 0.0

    async def prepare(self, stack: Stack) -> dict[int, Path]:
        return await self._prepare_rollouts(stack)

    async def run(self, stack: Stack, t0: float) -> None:
        self.t0 = t0
        await self._timeline(stack)

    async def _prepare_rollouts(self, stack: Stack) -> dict[int, Path]:
        """Build each rollout's bundle, upload it (and v1) to the gateway, stage it in the cloud."""
        out: dict[int, Path] = {}
        if not self.sc.rollouts:
            return out
        key = signing.load_private_key(self.models_dir / "keys" / "dev.key")
        cloud_repo = ModelRepository(
            stack.cloud_repository, trusted_keys=signing.load_trusted_keys(stack.public_key)
        )
        async with GatewayClient(stack.gateway_url, stack.admin_token) as gw:
            v1 = self.models_dir / "bundles" / f"{self.sc.stack.model}-1.bundle"
            if v1.exists():
                await gw.upload(v1)
            for i, ro in enumerate(self.sc.rollouts):
                out_dir = self.workdir / "bundles" / ro.variant
                bundle = out_dir / f"{ro.model}-{ro.version}.bundle"
                if not bundle.exists():
                    bundle = await asyncio.to_thread(
                        build_model, ro.model, ro.version, out_dir, key, ro.variant
                    )
                await gw.upload(bundle)
                if stack.spec.offload:
                    # The gateway loads rolled-out versions into the cloud tier by name and
                    # version; the files must be in the tier's repository (a shared volume
                    # in production).
                    await asyncio.to_thread(cloud_repo.install, bundle)
                out[i] = bundle
        return out

    async def _timeline(self, stack: Stack) -> None:
        steps: list[tuple[float, str, Any]] = [(f.at_s, "fault", f) for f in self.sc.faults]
        steps += [(r.at_s, "rollout", (i, r)) for i, r in enumerate(self.sc.rollouts)]
        pending: list[asyncio.Task[None]] = []
        for at, kind, item in sorted(steps, key=lambda s: s[0]):
            await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            if kind == "fault":
                pending.append(asyncio.create_task(self._fault(stack, item)))
            else:
                pending.append(asyncio.create_task(self._rollout(stack, *item)))
        await asyncio.gather(*pending)

    async def _fault(self, stack: Stack, f: Fault) -> None:
        self._event(f.kind, **f.model_dump(exclude={"at_s", "kind"}, exclude_defaults=True))
        if f.kind in ("wan-outage", "wan-blackhole") and stack.wan is not None:
            blackhole = f.kind == "wan-blackhole"
            stack.wan.outage(True, blackhole=blackhole)
            await asyncio.sleep(f.length_s)
            stack.wan.outage(False, blackhole=blackhole)
            self._event(f"{f.kind}-end")
        elif f.kind == "wan-drop" and stack.wan is not None:
            stack.wan.drop_connections()
        elif f.kind == "wan-profile" and stack.wan is not None and f.profile is not None:
            stack.wan.profile = f.profile
        elif f.kind == "agent-kill":
            await stack.kill_agent(f.agent)
            if f.restart_after_s is not None:
                await asyncio.sleep(f.restart_after_s)
                await stack.restart_agent(f.agent)
                self.cpu.sample(stack.agent_pids())
                self._event("agent-restarted", agent=f.agent)
        elif f.kind == "offload-kill" and stack.offload is not None:
            await asyncio.to_thread(stack.offload.stop, 0.0)
        elif f.kind == "cpu-hog":
            # Spawned through the stack's ProcessSet, so a Ctrl-C mid-hog leaves nothing.
            hogs = [
                stack.procs.spawn(f"cpu-hog-{i}", [sys.executable, "-c", _HOG, str(f.length_s)])
                for i in range(f.procs)
            ]
            await asyncio.sleep(f.length_s)
            for hog in hogs:
                await asyncio.to_thread(stack.procs.remove, hog, 1.0)
            self._event("cpu-hog-end")

    async def _rollout(self, stack: Stack, index: int, ro: Rollout) -> None:
        request: dict[str, Any] = {
            "model": ro.model,
            "version": ro.version,
            "strategy": ro.strategy,
            "waves": ro.waves,
            "bake_s": ro.bake_s,
        }
        if ro.gates:
            request["gates"] = ro.gates
        async with GatewayClient(stack.gateway_url, stack.admin_token) as gw:
            info = await gw.rollout(request)
            self._event("rollout-started", id=info["id"], model=ro.model, version=ro.version)
            limit = max(30.0, self.sc.duration_s - ro.at_s + self.sc.drain_s)
            final = await gw.wait_rollout(info["id"], limit_s=limit)
        self._event("rollout-" + str(final.get("state")), id=info["id"], reason=final.get("reason"))
        self.rollout_info.append(
            {
                k: final.get(k)
                for k in ("id", "model", "version", "state", "reason", "created_at", "finished_at")
            }
            # For the report: waves and gate verdicts (the gateway's event log) and gates.
            | {k: final.get(k) for k in ("strategy", "gates", "events")}
        )
