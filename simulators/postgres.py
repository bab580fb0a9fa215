"""A throwaway PostgreSQL server for tests and benchmarks: Debian's ``postgresql``
package (``.ci/run`` installs it), ``initdb`` in a temporary directory, ``postgres`` started
on a free loopback port, stopped by its own PID afterwards.

``initdb`` refuses to run as root, so as root both run as the ``postgres`` user the
package creates (``subprocess``'s ``user=``, so the server is our child and its PID the
one to stop) in a directory chowned to it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from simulators.broker import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresMissing(RuntimeError):
    """Debian's ``postgresql`` package (initdb, postgres) is not installed."""


def require_postgres() -> Path:
    bindir = pg_bin()
    if bindir is None:
        raise PostgresMissing("PostgreSQL is not installed (apt-get install postgresql)")
    return bindir


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL server (database ``postgres``, trust auth on
    loopback only). ``durable``: fsync on, as in production (benchmarks); tests run
    without it (they never test surviving a host crash)."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="edgecloud-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        uid, gid, groups = user.pw_uid, user.pw_gid, []
        os.chmod(root, 0o755)
        for path in (root, sock):
            os.chown(path, uid, gid)
    port = free_port()
    log = root / "server.log"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        cwd=root,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    # postgres itself, not pg_ctl: its PID is the one to stop, and it logs to our file.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sock),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"fsync={'on' if durable else 'off'}",
                "-c",
                "max_connections=50",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM, "smart", waits for clients).
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
