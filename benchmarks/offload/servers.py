"""Launch each server under test as its own process on free loopback ports, and stop it.

offload-server runs from this venv; MLServer 1.7 and PyTriton run from their own venvs
(``var/bench-venvs/...``; ``--install`` creates them) because their pins clash with ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

HERE = Path(__file__).resolve().parent
MLSERVER_PIP = ["mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy<2"]
PYTRITON_PIP = ["nvidia-pytriton", "onnxruntime", "numpy<2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Launched:
    name: str
    target: str
    proc: subprocess.Popen[bytes]
    note: str = ""
    log: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: Worker processes sharing the port: the load generator opens a connection per call
    #: in flight so the kernel can spread them (it balances connections, not calls).
    processes: int = 1

    def cpu_seconds(self) -> float:
        """CPU seconds of every process of the server (its session: workers included)."""
        return session_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of the live processes of session ``sid`` (Linux /proc).

    Every server is started in a session of its own (``start_new_session``), so this is
    the server with all its worker processes, and nothing else.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # after the command: state ppid pgrp session ... utime(12) stime(13)
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_ready(launched: Launched, model: str, timeout: float = 120.0) -> None:
    """Poll ServerReady + ModelReady over gRPC until both say yes."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(launched.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if launched.proc.poll() is not None:
                break
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready and (
                    stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=1).ready
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    tail = launched.log.read_text()[-3000:] if launched.log and launched.log.exists() else ""
    launched.stop()
    raise RuntimeError(f"{launched.name} did not get ready:\n{tail}")


def _spawn(cmd: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None):
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )


def start_offload(
    repository: Path,
    workdir: Path,
    workers: int,
    delay_us: int,
    inline_us: int,
    processes: int = 1,
) -> Launched:
    port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "offload", "--repository", str(repository)]
    cmd += ["--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1"]
    cmd += ["--http-port", str(http_port)]
    cmd += ["--workers", str(workers), "--max-queue-delay-us", str(delay_us)]
    cmd += ["--inline-max-us", str(inline_us), "--log-level", "WARNING"]
    cmd += ["--processes", str(processes)]
    name = "offload" if inline_us else "offload-executor"
    if processes > 1:
        name += f"-p{processes}"
    log = workdir / f"{name}.log"
    note = f"--workers {workers} --max-queue-delay-us {delay_us} (dynamic batching, max 64)"
    note += f" --inline-max-us {inline_us}"
    if processes > 1:
        note += f" --processes {processes} (one connection per call in flight)"
    launched = Launched(name, f"127.0.0.1:{port}", _spawn(cmd, log), note, log, processes=processes)
    launched.extra["http"] = f"127.0.0.1:{http_port}"
    return launched


def start_ceiling(model_file: Path, name: str, workdir: Path) -> Launched:
    """The no-op grpc.aio server (``ceiling.py``): answers with the model's output shape."""
    import onnxruntime as ort

    out = ort.InferenceSession(str(model_file)).get_outputs()[0]
    port = free_port()
    cmd = [sys.executable, str(HERE / "ceiling.py"), str(port), name, out.name, str(out.shape[-1])]
    log = workdir / "ceiling.log"
    note = "no-op grpc.aio ModelInfer handler: parses the request, returns a cached response"
    return Launched("ceiling", f"127.0.0.1:{port}", _spawn(cmd, log), note, log)


def start_mlserver(
    venv: Path, model_file: Path, name: str, workdir: Path, parallel_workers: int
) -> Launched:
    folder = (workdir / f"mlserver-pw{parallel_workers}").resolve()
    venv = venv.resolve()
    if folder.exists():
        shutil.rmtree(folder)
    (folder / name).mkdir(parents=True)
    shutil.copyfile(HERE / "mlserver_runtime.py", folder / name / "mlserver_runtime.py")
    grpc_port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": parallel_workers,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": name,
        "implementation": "mlserver_runtime.OrtRuntime",
        "parameters": {"uri": str(model_file.resolve())},
    }
    (folder / name / "model-settings.json").write_text(json.dumps(model_settings))
    env = dict(os.environ, PYTHONPATH=str(folder / name))
    log = workdir / f"mlserver-pw{parallel_workers}.log"
    proc = _spawn([str(venv / "bin" / "mlserver"), "start", str(folder)], log, folder, env)
    note = f"MLServer 1.7.1, parallel_workers={parallel_workers}, custom ORT runtime"
    launched = Launched(f"mlserver-pw{parallel_workers}", f"127.0.0.1:{grpc_port}", proc, note, log)
    launched.extra["http"] = f"127.0.0.1:{settings['http_port']}"
    return launched


def start_pytriton(venv: Path, model_file: Path, name: str, workdir: Path) -> Launched:
    venv, model_file = venv.resolve(), model_file.resolve()
    grpc_port = free_port()
    workspace = (workdir / "pytriton-workspace").resolve()
    if workspace.exists():
        shutil.rmtree(workspace)
    ports = [str(grpc_port), str(free_port()), str(free_port()), str(workspace)]
    cmd = [str(venv / "bin" / "python"), str(HERE / "pytriton_server.py"), str(model_file), name]
    log = workdir / "pytriton.log"
    # Triton's python-backend stub links libpython dynamically: point it at the venv's own
    # interpreter library, or it may pick a system libpython whose stdlib does not match.
    libdir = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    proc = _spawn(cmd + ports, log, workdir, env)
    return Launched("pytriton", f"127.0.0.1:{grpc_port}", proc, "PyTriton, @batch, max 64", log)


def install_venv(venv: Path, packages: list[str], python: str = "python3.11") -> None:
    """Create ``venv`` with ``packages`` (the ordinary pip client) unless it exists."""
    if (venv / "bin" / "python").exists():
        return
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
