"""The four programs as real subprocesses, their output read line by line as it comes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: ``python -m <module>`` per program: the same code the console scripts run.
MODULES = {
    "edge-agent": "edge_agent",
    "offload-server": "offload",
    "cloud-gateway": "cloud_gateway",
    "fleet-sim": "simulators",
}


class Program:
    """One running program; ``stdout``/``stderr`` fill up while it runs."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULES[name], *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, *, stream: str = "stdout", timeout: float = 60.0) -> str:
        lines = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no line matching {pattern!r}\n{self.output()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, the way Kubernetes and systemd stop a process; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM\n{self.output()}") from None
        for t in self._pumps:
            t.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])


def run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", MODULES[name], *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def json_records(lines: list[str]) -> list[dict[str, Any]]:
    """Every line must be one JSON log object with the four required keys."""
    out = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), line
        out.append(record)
    return out


def write_tokens(path: Path) -> Path:
    path.write_text("admin ops-admin\nagent ops-agent\nviewer ops-viewer\n")
    return path
