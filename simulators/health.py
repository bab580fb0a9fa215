"""Waiting for a started component to become healthy, failing fast when it dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from models.errors import EdgecloudError, Unavailable
from simulators.procs import Managed

log = logging.getLogger(__name__)


class StackError(EdgecloudError):
    """A component failed to start or become healthy."""


async def wait_port(name: str, proc: Managed | None, port: int, limit_s: float) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``."""

    async def probe() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await _wait(name, proc, probe, limit_s)


async def wait_http(name: str, proc: Managed | None, url: str, limit_s: float) -> None:
    """Until ``GET url`` answers 200 (``/readyz``, ``/healthz``)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

        async def probe() -> bool:
            try:
                async with http.get(url) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await _wait(name, proc, probe, limit_s)


async def _wait(
    name: str, proc: Managed | None, probe: Callable[[], Awaitable[bool]], limit_s: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if proc is not None and not proc.alive():
            raise StackError(
                f"{name} exited with code {proc.proc.returncode} before it was ready; "
                f"last log lines:\n{proc.log_tail()}"
            )
        if await probe():
            log.info("%s is ready", name)
            return
        await asyncio.sleep(0.1)
    tail = proc.log_tail() if proc is not None else ""
    raise Unavailable(f"{name} not ready after {limit_s:.0f}s; last log lines:\n{tail}")
