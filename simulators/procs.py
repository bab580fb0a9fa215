"""Child processes that cannot outlive fleet-sim.

Three layers, because each covers a case the others miss:
1. every child runs in its own session/process group, so stopping it also stops anything
   it forked (``os.killpg``), and a terminal Ctrl-C reaches only fleet-sim, which then
   stops the children in order (agents before broker, so nobody reconnect-storms);
2. ``atexit`` and the SIGTERM/SIGHUP handlers of :func:`install_signal_handlers` stop
   every registered group on any Python-level exit;
3. ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL a child whose parent died without
   running Python cleanup (SIGKILL, segfault, OOM killer).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_LIVE: set[ProcessSet] = set()
_LIVE_LOCK = threading.Lock()


def _child_setup() -> None:
    """Runs in the child between fork and exec: die with the parent (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Managed:
    """One started child: name, argv, its log file and the Popen handle."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM the group, wait ``grace_s``, then SIGKILL it; returns the exit code."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.1fs: killing", self.name, grace_s)
        # Grandchildren may linger after the leader exited: the group kill reaches them.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2.0)
        return self.proc.returncode


class ProcessSet:
    """Starts children with logs under ``log_dir`` and stops them in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Managed] = []
        with _LIVE_LOCK:
            _LIVE.add(self)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Managed:
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab") as out:
            # PDEATHSIG follows the *thread* that forked: spawn from the main thread only.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_child_setup if sys.platform.startswith("linux") else None,
            )
        child = Managed(name, list(argv), proc, log_path)
        self.children.append(child)
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every child but the first (the broker) at once, then the broker.

        Clients go first so none of them reconnect-storms a vanishing broker; signalling
        them together keeps a 10-agent stack's shutdown to one grace period.
        """
        clients, first = self.children[1:], self.children[:1]
        for group in (clients, first):
            for child in group:
                if child.alive():
                    child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for child in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                if child.alive():
                    log.warning("%s did not stop in %.1fs: killing", child.name, grace_s)
                child.stop(0.0)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def remove(self, child: Managed, grace_s: float = 5.0) -> None:
        child.stop(grace_s)
        self.children.remove(child)


def stop_all(grace_s: float = 3.0) -> None:
    """Stop every live ProcessSet (atexit and signal path)."""
    with _LIVE_LOCK:
        sets = list(_LIVE)
    for ps in sets:
        ps.stop(grace_s)


atexit.register(stop_all)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP exit through Python (so ``finally``/atexit run) like Ctrl-C."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def wait_exit(child: Managed, timeout: float) -> int | None:
    """Exit code within ``timeout`` or None (still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (code := child.proc.poll()) is not None:
            return code
        time.sleep(0.05)
    return None


def command(script: str, module: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m module``."""
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return [str(beside)]
    found = shutil.which(script)
    return [found] if found else [sys.executable, "-m", module]
