"""The control channel between the ``--processes`` supervisor and one worker process.

One Unix stream connection per worker, JSON lines, calls in both directions: the worker
asks the supervisor to apply a load/unload everywhere, the supervisor asks the worker to
apply one, to hand over its metrics, or whether it is ready. Each call carries an id and
is answered by a reply with the same id, so a slow call (a model load) never holds up a
quick one (a scrape) on the same connection.

Errors cross as ``{"status": ..., "message": ...}`` and come back out as the
:class:`~models.errors.EdgecloudError` of that status, so a worker's NOT_FOUND reaches the
gRPC or HTTP caller of another worker unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from models.errors import EdgecloudError, Status, Unavailable

log = logging.getLogger(__name__)

Message = dict[str, Any]
#: Answers one call from the other side; raising EdgecloudError answers with that error.
Handler = Callable[[Message], Awaitable[Message]]

#: A scrape of a worker with hundreds of model versions is a few hundred kB on one line.
LINE_LIMIT = 64 * 1024 * 1024


class ChannelClosed(Unavailable):
    """The other side went away (exited, crashed) before it answered."""


class ControlChannel:
    """Calls over one connection; :meth:`serve` must run for replies to arrive."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def connect(cls, path: str, handler: Handler) -> ControlChannel:
        reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
        return cls(reader, writer, handler)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, body: Message, timeout_s: float | None = None) -> Message:
        """Send ``body``, wait for the reply's body; the other side's error is raised here."""
        if self._closed:
            raise ChannelClosed("control channel is closed")
        call_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            await self._send({"id": call_id, "call": body})
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(call_id, None)

    async def serve(self) -> None:
        """Read until the other side closes: replies wake their callers, calls run as tasks."""
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "call" in message:
                    task = asyncio.create_task(self._answer(message["id"], message["call"]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                future = self._waiting.get(message["id"])
                if future is None or future.done():
                    continue  # its caller timed out
                if "error" in message:
                    error = message["error"]
                    future.set_exception(
                        EdgecloudError(error["message"], status=Status(error["status"]))
                    )
                else:
                    future.set_result(message["reply"])
        except (ConnectionError, ValueError) as exc:
            log.warning("control channel failed: %s", exc)
        finally:
            self._closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ChannelClosed("the other process went away"))
            for task in list(self._tasks):
                task.cancel()
            self._writer.close()

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _answer(self, call_id: int, body: Message) -> None:
        try:
            reply: Message = {"id": call_id, "reply": await self._handler(body)}
        except EdgecloudError as exc:
            reply = {"id": call_id, "error": {"status": exc.status.value, "message": exc.message}}
        except Exception as exc:  # a bug: the caller gets INTERNAL, the log the traceback
            log.exception("control call %s failed", body.get("op"))
            reply = {"id": call_id, "error": {"status": "INTERNAL", "message": repr(exc)}}
        with contextlib.suppress(ConnectionError):
            await self._send(reply)

    async def _send(self, message: Message) -> None:
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await self._writer.drain()
