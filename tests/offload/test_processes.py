"""``offload-server --processes 2``: real processes on one port, one /metrics, one repository.

The tests run in order against one server (module fixture): they share its state on
purpose, e.g. the worker killed later must come back without the model unloaded before.
Every check opens fresh connections (``own_connection``): the kernel spreads connections,
not calls, over the SO_REUSEPORT workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.errors import EdgecloudError, NotFound
from offload.client import OffloadClient
from tests.offload.conftest import ADMIN_TOKEN, ServerProcess
from tests.offload.graphs import affine_model

X = np.ones((1, 4), np.float32)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("procs-repo")
    affine_model(repo / "affine" / "1" / "model.onnx", 1)
    proc = ServerProcess(repo, "--processes", "2", "--grace-s", "2")
    proc.repository = repo  # type: ignore[attr-defined]
    yield proc
    proc.kill()


def worker_pids(server: ServerProcess) -> dict[str, int]:
    """worker index -> pid, from the supervisor's per-worker family."""
    pids = {}
    for line in server.metrics().splitlines():
        found = re.match(r'offload_worker_requests\{pid="(\d+)",worker="(\d+)"\}', line)
        if found:
            pids[found.group(2)] = int(found.group(1))
    return pids


def served(server: ServerProcess) -> dict[str, float]:
    """worker index -> inference requests it has answered."""
    out = {}
    for line in server.metrics().splitlines():
        found = re.match(r'offload_worker_requests\{pid="\d+",worker="(\d+)"\} (\S+)', line)
        if found:
            out[found.group(1)] = float(found.group(2))
    return out


async def infer_fresh(server: ServerProcess, model: str) -> np.ndarray:
    """One inference over a connection of its own (a new draw of the kernel's spreading)."""
    async with OffloadClient(server.target, own_connection=True) as client:
        out = await client.infer(model, None, {"x": X}, time.monotonic() + 10)
    return out["y"]


def spread(server: ServerProcess, model: str, max_connections: int = 32) -> dict[str, float]:
    """Infer ``model`` over fresh connections until every worker has answered one;
    the per-worker requests answered meanwhile."""
    before = served(server)

    async def go() -> dict[str, float]:
        delta: dict[str, float] = {}
        for n in range(max_connections):
            np.testing.assert_allclose(await infer_fresh(server, model), X * 2 + 1)
            if n >= 3:
                after = served(server)
                delta = {w: after[w] - before.get(w, 0.0) for w in after}
                if len(delta) == 2 and all(v > 0 for v in delta.values()):
                    break
        return delta

    return asyncio.run(go())


def readyz(server: ServerProcess) -> int:
    url = f"http://127.0.0.1:{server.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_both_workers_serve_one_port(pool: ServerProcess) -> None:
    assert readyz(pool) == 200
    assert len(set(worker_pids(pool).values())) == 2
    delta = spread(pool, "affine")
    assert sorted(delta) == ["0", "1"] and all(v > 0 for v in delta.values()), delta
    # One /metrics for both: the merged Triton counter is the sum of the workers' counts.
    assert pool.metric("nv_inference_count", model="affine") == sum(served(pool).values())
    assert pool.metric("offload_models_ready") == 1
    assert pool.metric("process_cpu_seconds_total", worker="supervisor") > 0
    # The HTTP port is shared the same way.
    url = f"http://{pool.http_target}/v2/models/affine"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert json.load(response)["name"] == "affine"


def test_a_load_through_one_connection_reaches_every_worker(pool: ServerProcess) -> None:
    repo: Path = pool.repository  # type: ignore[attr-defined]
    affine_model(repo / "fresh" / "1" / "model.onnx", 1)

    async def load() -> None:
        async with OffloadClient(pool.target, admin_token=ADMIN_TOKEN) as client:
            await client.load_model("fresh")

    asyncio.run(load())
    # Every worker has it the moment the call returned: no retries, no waiting.
    delta = spread(pool, "fresh")
    assert sorted(delta) == ["0", "1"] and all(v > 0 for v in delta.values()), delta
    assert pool.metric("offload_models_ready") == 2


def test_a_failure_in_the_workers_is_the_callers(pool: ServerProcess) -> None:
    async def load_missing() -> None:
        async with OffloadClient(pool.target, admin_token=ADMIN_TOKEN) as client:
            await client.load_model("no-such-model")

    with pytest.raises(NotFound, match=r"no no-such-model/<version>/model\.onnx"):
        asyncio.run(load_missing())

    async def unauthenticated() -> None:
        async with OffloadClient(pool.target) as client:
            await client.unload_model("fresh")

    with pytest.raises(EdgecloudError, match="needs an admin credential"):
        asyncio.run(unauthenticated())


def test_an_unload_reaches_every_worker(pool: ServerProcess) -> None:
    async def unload_then_try() -> list[str]:
        async with OffloadClient(pool.target, admin_token=ADMIN_TOKEN) as client:
            await client.unload_model("fresh")
        errors = []
        for _ in range(12):
            with pytest.raises(NotFound) as exc:
                await infer_fresh(pool, "fresh")
            errors.append(exc.value.message)
        return errors

    errors = asyncio.run(unload_then_try())
    assert all("'fresh' is not loaded" in e for e in errors)
    assert pool.metric("offload_models_ready") == 1


def test_the_http_repository_api_reaches_every_worker_too(pool: ServerProcess) -> None:
    def post(path: str) -> int:
        request = urllib.request.Request(
            f"http://{pool.http_target}{path}",
            data=b"{}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)

    assert post("/v2/repository/models/fresh/load") == 200
    delta = spread(pool, "fresh")
    assert sorted(delta) == ["0", "1"] and all(v > 0 for v in delta.values()), delta
    assert post("/v2/repository/models/fresh/unload") == 200

    async def gone_everywhere() -> None:
        for _ in range(8):
            with pytest.raises(NotFound):
                await infer_fresh(pool, "fresh")

    asyncio.run(gone_everywhere())


def gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` is reaped: until then its listening socket may still take (and
    reset) a new connection, the one moment a crash costs a caller (its retry gets in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return
        if state == "Z":  # exited, sockets closed; an orphan waits for init to reap it
            return
        time.sleep(0.01)
    pytest.fail(f"pid {pid} still exists")


def test_a_killed_worker_is_restarted_and_calls_keep_succeeding(pool: ServerProcess) -> None:
    pids = worker_pids(pool)
    # On disk but never loaded through the API: the restarted worker must not serve it
    # either, although it loads the repository from disk like any worker at start.
    repo: Path = pool.repository  # type: ignore[attr-defined]
    affine_model(repo / "unannounced" / "1" / "model.onnx", 1)

    async def before_and_after() -> None:
        # Clients connected before the crash, to either worker: their next call reconnects.
        clients = [OffloadClient(pool.target, own_connection=True) for _ in range(6)]
        for client in clients:
            await client.start()
            await client.infer("affine", None, {"x": X}, time.monotonic() + 10)
        os.kill(pids["1"], signal.SIGKILL)
        await asyncio.to_thread(gone, pids["1"])
        for client in clients:
            out = await client.infer("affine", None, {"x": X}, time.monotonic() + 10)
            np.testing.assert_allclose(out["y"], X * 2 + 1)
            await client.close()
        # Meanwhile the other worker takes every new connection.
        for _ in range(4):
            np.testing.assert_allclose(await infer_fresh(pool, "affine"), X * 2 + 1)

    asyncio.run(before_and_after())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pool.metric("offload_worker_restarts_total", worker="1") == 1 and readyz(pool) == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker 1 was not restarted:\n" + pool.log[-3000:])
    assert worker_pids(pool)["1"] != pids["1"]
    assert f"worker 1 pid={pids['1']} exited unasked" in pool.log
    # The restarted worker serves, and serves what its sibling does: not the unloaded
    # 'fresh', not the unannounced model.
    delta = spread(pool, "affine")
    assert all(v > 0 for v in delta.values()) and len(delta) == 2, delta

    async def fresh_everywhere_gone() -> None:
        for _ in range(12):
            with pytest.raises(NotFound):
                await infer_fresh(pool, "fresh")
            with pytest.raises(NotFound):
                await infer_fresh(pool, "unannounced")

    asyncio.run(fresh_everywhere_gone())


def test_when_every_worker_dies_the_history_is_replayed(pool: ServerProcess) -> None:
    pids = worker_pids(pool)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = worker_pids(pool)
        if readyz(pool) == 200 and all(now[w] != pids[w] for w in pids):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the workers were not restarted:\n" + pool.log[-3000:])
    # No sibling to copy from: each loaded the repository and replayed load + unload.
    delta = spread(pool, "affine")
    assert all(v > 0 for v in delta.values()) and len(delta) == 2, delta

    async def fresh_gone() -> None:
        for _ in range(8):
            with pytest.raises(NotFound):
                await infer_fresh(pool, "fresh")

    asyncio.run(fresh_gone())


def test_sigterm_stops_every_process(pool: ServerProcess) -> None:
    pids = worker_pids(pool).values()
    assert pool.terminate() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "offload-server stopped" in pool.log


def test_a_taken_port_fails_the_start_with_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:  # no SO_REUSEPORT: nobody may share it
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "offload", "--repository", str(tmp_path)]
        cmd += ["--grpc-port", str(port), "--metrics-port", "-1", "--processes", "2"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"cannot bind 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    affine_model(tmp_path / "affine" / "1" / "model.onnx", 1)
    proc = ServerProcess(tmp_path, "--processes", "2", "--grace-s", "1")
    try:
        pids = list(worker_pids(proc).values())
        assert len(pids) == 2
        proc.kill()  # SIGKILL: no chance to stop its workers
        for pid in pids:
            gone(pid)  # they notice the closed control channel and drain
    finally:
        proc.kill()
