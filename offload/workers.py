"""One worker process of ``offload-server --processes N`` (``python -m offload.workers``).

The supervisor (offload/supervisor.py) starts it with the path of its control socket. The
worker says hello, receives its settings and what the others serve, loads the repository,
makes its loaded versions match theirs, and only then binds the shared ports
(SO_REUSEPORT): a restarted worker never serves a model the others have unloaded, nor one
that was put on disk but not (yet) loaded through the repository API. What the others
serve is a live sibling's list of loaded versions; when no sibling is alive, it is every
load/unload made so far, replayed in order.

A load/unload this worker receives is authorised here, exactly as in a single process,
and then relayed to the supervisor, which applies it to every worker (this one included)
before the call returns. The worker stops on SIGTERM, or when the supervisor goes
away (its control connection closes): an orphan must not keep half a port.
SIGINT is ignored: the supervisor turns it into SIGTERM for every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from models.errors import EdgecloudError, InvalidInput, Unavailable
from offload.control import ControlChannel, Message
from offload.model_store import ModelStore
from offload.server import OffloadServer
from offload.settings import OffloadSettings
from shell.logs import setup_logging

log = logging.getLogger(__name__)
lifecycle_log = logging.getLogger("offload.lifecycle")

#: Repository changes travel as {"op": "load"|"unload", "name": str, "version": int|None}.
OPS = ("load", "unload")


async def mirror(store: ModelStore, wanted: set[tuple[str, int]]) -> None:
    """Make ``store`` serve exactly the ``(name, version)`` pairs of ``wanted``."""
    have = {(m.name, m.version) for m in store.loaded()}
    for name, version in sorted(have - wanted):
        await store.unload(name, version)
    for name, version in sorted(wanted - have):
        try:
            await store.load(name, version)
        except EdgecloudError as exc:  # gone from disk meanwhile: the others keep serving it
            log.warning("cannot load %s:%d like the other workers: %s", name, version, exc.message)


async def apply(store: ModelStore, op: Message) -> list[int]:
    """One repository change on this process's store; the versions of the model now ready."""
    name, version = str(op["name"]), op.get("version")
    if op["op"] == "load":
        return await store.load(name, version)
    if op["op"] == "unload":
        await store.unload(name, version)
        return store.ready_versions(name)
    raise InvalidInput(f"unknown repository operation {op['op']!r}")


class SupervisorRelay:
    """The worker's :class:`~offload.core.RepositoryControl`: every change goes through
    the supervisor, which applies it to all workers and reports any one's failure."""

    def __init__(self, channel: ControlChannel) -> None:
        self._channel = channel

    async def load(self, name: str, version: int | None = None) -> list[int]:
        reply = await self._channel.call({"op": "load", "name": name, "version": version})
        return [int(v) for v in reply["versions"]]

    async def unload(self, name: str, version: int | None = None) -> None:
        await self._channel.call({"op": "unload", "name": name, "version": version})


class Worker:
    """One worker's life: hello, start, serve, answer the supervisor's calls, drain."""

    def __init__(self, index: int, control_path: str) -> None:
        self._index = index
        self._path = control_path
        self._server: OffloadServer | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> int:
        channel = await ControlChannel.connect(self._path, self._handle)
        reading = asyncio.create_task(channel.serve(), name="control-channel")
        reading.add_done_callback(self._supervisor_gone)
        # Only SIGTERM, from the supervisor: Ctrl-C reaches the whole process group, and a
        # worker that stopped on its own SIGINT would look like a crash to be restarted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._stop.set)
        hello = {"op": "hello", "index": self._index, "pid": os.getpid()}
        spec = await channel.call(hello, timeout_s=60)
        settings = OffloadSettings.model_validate(spec["settings"])
        replay: list[Message] = spec["replay"]
        siblings: list[tuple[str, int]] | None = spec.get("mirror")

        async def catch_up(store: ModelStore) -> None:
            if siblings is not None:
                await mirror(store, {(str(n), int(v)) for n, v in siblings})
                return
            for op in replay:
                try:
                    await apply(store, op)
                except EdgecloudError as exc:  # it failed (or will) in the others too
                    log.warning("replaying %s %s: %s", op["op"], op["name"], exc.message)

        server = OffloadServer(
            settings,
            name=f"offload-server worker {self._index}",
            reuse_port=True,
            control=SupervisorRelay(channel),
            after_load=catch_up,
        )
        self._server = server
        await server.start()
        try:
            self._started.set()
            await channel.call({"op": "ready", "index": self._index}, timeout_s=60)
            await self._stop.wait()
            lifecycle_log.info("worker %d: draining for up to %.1fs", self._index, settings.grace_s)
        finally:
            await server.stop()
            await channel.close()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        return 0

    def _supervisor_gone(self, reading: asyncio.Task[None]) -> None:
        if not self._stop.is_set():
            log.warning("worker %d: the supervisor went away; stopping", self._index)
        self._stop.set()

    async def _handle(self, body: Message) -> Message:
        """A call from the supervisor."""
        op = body.get("op")
        if op in OPS:
            await self._started.wait()  # a change sent while this worker was still loading
            server = self._running()
            return {"versions": await apply(server.store, body)}
        if op == "loaded":
            models = self._running().store.loaded()
            return {"models": [[m.name, m.version] for m in models]}
        if op == "metrics":
            return {"text": self._running().metrics.exposition().decode()}
        raise InvalidInput(f"unknown control call {op!r}")

    def _running(self) -> OffloadServer:
        if self._server is None:
            raise Unavailable(f"worker {self._index} is still starting")
        return self._server


class _WorkerTag(logging.Filter):
    """Appends ``[wN]`` to each record's logger name."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._suffix = f"[w{index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self._suffix):
            record.name += self._suffix
        return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m offload.workers",
        description="one worker of offload-server --processes N (started by its supervisor)",
    )
    p.add_argument("--control", required=True, help="the supervisor's control socket")
    p.add_argument("--index", type=int, required=True, help="this worker's position, from 0")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", default="text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format, stream=sys.stdout)
    logging.getLogger("offload.lifecycle").setLevel(logging.INFO)
    # N workers write to the same stream: every line names its worker (the logger field).
    tag = _WorkerTag(args.index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
    try:
        return asyncio.run(Worker(args.index, args.control).run())
    except EdgecloudError as exc:
        log.error("worker %d: %s", args.index, exc.message)
        return 1
    except OSError as exc:
        log.error("worker %d cannot start: %s", args.index, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
