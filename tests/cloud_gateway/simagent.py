"""A lightweight in-process edge agent for rollout tests.

It is the real update path of an agent - ``models.repository.ModelRepository``,
``edge_agent.model.slot.ModelSlot`` (load-before-unload swap) and
``edge_agent.model.updater.ModelUpdater`` downloading from the gateway with its token - plus
real ONNX Runtime inference at a steady rate with sequence numbers and heartbeats on
the real MQTT contract. Only the sensor ingest of a full ``edge-agent`` is left out, so
twenty of them fit on a two-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from bus.broker import BrokerUrl, make_client
from bus.topics import Topics
from edge_agent.model.slot import ModelSlot
from edge_agent.model.updater import ModelUpdater, SlotTarget
from models.errors import EdgecloudError
from models.repository import ModelRepository

MODEL = "motion-edge"


def _timed(backend: Any, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    # Timed inside the worker so thread hand-off noise does not drown compute time.
    t0 = time.perf_counter()
    out = backend.infer({"input": x})
    return out, (time.perf_counter() - t0) * 1000


class SimAgent:
    def __init__(
        self,
        agent_id: str,
        site: str,
        root: Path,
        broker: str,
        topics: Topics,
        trusted_keys: dict[str, Any],
        token: str,
        executor: Executor,
        *,
        rate_hz: float = 10.0,
        heartbeat_s: float = 0.3,
        batch: int = 1,
        gateway_url: str | None = None,
        gateway_keys: dict[str, Any] | None = None,
    ) -> None:
        self.agent_id, self.site, self.topics = agent_id, site, topics
        self.repo = ModelRepository(root, trusted_keys=trusted_keys, check=False)
        self.slot = ModelSlot(root, executor, kind="onnxruntime", warmup_batches=(1, 8))
        self.updater = ModelUpdater(
            agent_id,
            site,
            self.repo,
            SlotTarget(self.slot),
            token,
            trusted_keys,
            self._on_update,
            keep=3,
            gateway_url=gateway_url,
            gateway_keys=gateway_keys,
            sequence_file=root / ".desired-sequence.json",
            retry_base_s=0.2,
            retry_cap_s=1.0,
        )
        self.executor = executor
        self.period = 1.0 / rate_hz
        self.heartbeat_s = heartbeat_s
        self.batch = batch
        self.seq = 0
        self.served: list[tuple[int, int]] = []  # (seq, version) of every answered request
        self.errors: list[tuple[int, str]] = []
        self.inferences = self.nan_outputs = 0
        self.latencies: deque[tuple[float, float]] = deque(maxlen=400)
        self.desired_seen: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._beat = asyncio.Event()
        url = BrokerUrl.parse(broker)
        self.client = make_client(url, f"sim-{agent_id}-{id(self) % 10000}")
        self.client.will_set(
            topics.status(agent_id),
            json.dumps({"agent_id": agent_id, "online": False}),
            qos=1,
            retain=True,
        )
        self._url = url

    async def start(self, bundle: Path) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.repo.install, bundle)
        await self.slot.load(MODEL)
        connected = asyncio.Event()

        def on_connect(client: mqtt.Client, *args: Any) -> None:
            client.subscribe(self.topics.desired(self.agent_id), qos=1)
            loop.call_soon_threadsafe(connected.set)

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            loop.call_soon_threadsafe(self._desired, bytes(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect(self._url.host, self._url.port, keepalive=10)
        self.client.loop_start()
        async with asyncio.timeout(5):
            await connected.wait()
        self._tasks = [
            asyncio.create_task(self._infer_loop(), name=f"{self.agent_id}-infer"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.agent_id}-beat"),
        ]

    def _desired(self, payload: bytes) -> None:
        if payload:
            self.desired_seen.append(json.loads(json.loads(payload)["document"]))
            self._tasks.append(asyncio.create_task(self.updater.handle_desired(payload)))

    def _on_update(self, state: dict[str, Any]) -> None:
        self._beat.set()

    @property
    def version(self) -> int:
        return self.slot.active[0].version

    def settled(self, version: int) -> bool:
        """Serving ``version`` with the updater done: the slot switches inside swap(),
        before the updater activates, prunes and reports "ok"."""
        state = self.updater.state
        done = state["state"] in ("idle", "ok") and state["version"] in (0, version)
        return done and self.version == version

    async def _infer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(abs(hash(self.agent_id)) % 2**32)
        x = rng.normal(size=(self.batch, 100, 6)).astype(np.float32)
        while True:
            self.seq += 1
            seq = self.seq
            lease = self.slot.lease()
            try:
                out, ms = await loop.run_in_executor(self.executor, _timed, lease.backend, x)
                self.latencies.append((time.monotonic(), ms))
                self.inferences += 1
                self.nan_outputs += int(np.isnan(out["probabilities"]).any())
                self.served.append((seq, lease.manifest.version))
            except EdgecloudError as exc:
                self.errors.append((seq, exc.message))
            finally:
                lease.release()
            await asyncio.sleep(self.period)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = sorted(ms for t, ms in self.latencies if now - t < 2.0)
        p = (lambda q: recent[min(len(recent) - 1, int(q * len(recent)))]) if recent else None
        return {
            "agent_id": self.agent_id,
            "site": self.site,
            "online": True,
            "ts": time.time(),
            "models": {MODEL: {"version": self.version, "state": "serving"}},
            "update": self.updater.state,
            "health": {"ready": True, "broker": True, "cloud": "none"},
            "metrics": {
                "inferences": self.inferences,
                "errors": len(self.errors),
                "nan_outputs": self.nan_outputs,
                "p50_ms": p(0.5) if p else 0.0,
                "p99_ms": p(0.99) if p else 0.0,
                "error_rate": 0.0,
                "slo_attainment": 1.0,
                "offload_share": 0.0,
            },
        }

    async def _heartbeat_loop(self) -> None:
        while True:
            self.client.publish(
                self.topics.status(self.agent_id), json.dumps(self.status()), qos=1, retain=True
            )
            self._beat.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self._beat.wait()

    def check_no_loss(self) -> None:
        """Every request got an answer, in order, none failed."""
        assert not self.errors, f"{self.agent_id}: failed inferences {self.errors[:3]}"
        seqs = [s for s, _ in self.served]
        assert seqs == list(range(1, len(seqs) + 1)), f"{self.agent_id}: gaps in sequence"
        assert self.seq - len(seqs) <= 1, f"{self.agent_id}: unanswered requests"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.updater.close()
        self.client.publish(self.topics.status(self.agent_id), b"", qos=1, retain=True)
        self.client.publish(self.topics.desired(self.agent_id), b"", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()
        self.slot.close()
