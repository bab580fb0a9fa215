"""A dynamic batcher: one queue plus futures per model version (Triton's semantics).

Requests queue until a model instance is free; the collector then takes up to
``max_batch_size`` rows (or the largest preferred size that fits), waiting at most
``max_queue_delay_s`` for a fuller batch. Expired requests are dropped before compute.
Compute runs in the shared sized executor; results come back to the loop with
``call_soon_threadsafe``. On failure every request of the batch gets the error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from models.errors import (
    BackendError,
    DeadlineExceeded,
    EdgecloudError,
    InvalidInput,
    Overloaded,
    Unavailable,
)

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
_Outcome = tuple[list[Arrays] | None, EdgecloudError | None]


@dataclass(frozen=True)
class BatchConfig:
    """How one model version batches; ``max_batch_size`` 0 means the model cannot batch."""

    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_sizes: tuple[int, ...] = ()
    max_queue: int = 4096
    instances: int = 1
    #: Run a batch on the event loop when no other batch is running and the measured batch
    #: time is at most this (0: always in the executor).
    inline_max_s: float = 0.0


class ServiceTime:
    """Smoothed batch time of one model version, to predict a batch's time before running it.

    Two moving averages: seconds per batch (covers a fixed per-call cost) and seconds per
    row (covers the part that grows with the batch); a prediction takes the larger of the
    batch average and ``per-row x rows``, so a model that is quick for one row is not
    assumed quick for 64. Updated from whichever thread ran the batch; a lost update
    between two threads only delays the average by one sample.
    """

    ALPHA = 0.2

    def __init__(self) -> None:
        self._batch_s: float | None = None
        self._row_s = 0.0

    def observe(self, seconds: float, rows: int) -> None:
        per_row = seconds / max(1, rows)
        last = self._batch_s
        if last is None:
            self._batch_s, self._row_s = seconds, per_row
            return
        a = self.ALPHA
        self._batch_s = (1 - a) * last + a * seconds
        self._row_s = (1 - a) * self._row_s + a * per_row

    def predict(self, rows: int) -> float | None:
        """Expected seconds for a batch of ``rows``; None before the first batch."""
        if self._batch_s is None:
            return None
        return max(self._batch_s, self._row_s * rows)


class BatchObserver:
    """Hooks the batcher calls from the compute thread (metrics); defaults do nothing."""

    def batch(
        self, rows: int, requests: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One batch of ``rows`` rows from ``requests`` requests ran: gathering its inputs
        took ``input_s``, the backend ``infer_s``, splitting the outputs ``output_s``."""

    def queued(self, seconds: float) -> None:
        """One request waited ``seconds`` between arrival and the start of its compute."""

    def expired(self) -> None:
        """One request was dropped before compute because its deadline had passed."""


class _Item:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "rows", "signature")

    def __init__(
        self, inputs: Arrays, rows: int, deadline: float | None, future: asyncio.Future[Arrays]
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.deadline = deadline
        self.future = future
        self.enqueued = time.monotonic()
        # Requests only share a batch when their non-batch dimensions agree.
        self.signature = tuple(a.shape[1:] for a in inputs.values())


class DynamicBatcher:
    """Queue + futures in front of one model version's synchronous ``run`` function.

    Callback-driven, without a collector task: ``submit``, a finished batch and the
    queue-delay timer each call ``_pump``, which dispatches while an instance is free.
    That keeps the hot path at one executor round trip per batch.
    """

    def __init__(
        self,
        run: Callable[[Mapping[str, np.ndarray]], Arrays],
        config: BatchConfig,
        executor: Executor,
        *,
        label: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self._executor = executor
        self._label = label
        self._observer = observer or BatchObserver()
        self._queue: deque[_Item] = deque()
        self._rows_queued = 0
        self._free = max(1, config.instances)
        self._in_flight = 0
        self._full = config.max_batch_size or 1
        if config.preferred_sizes:
            self._full = min(self._full, max(config.preferred_sizes))
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service = ServiceTime()
        self.inline_batches = 0  # batches run on the event loop (config.inline_max_s)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, inputs: Arrays, rows: int, deadline: float | None = None) -> Arrays:
        """Queue one request of ``rows`` rows; resolves to its own output rows."""
        loop = self._loop
        if self._closing or loop is None:
            raise Unavailable(f"model {self._label} is unloading")
        limit = self.config.max_batch_size
        if limit and rows > limit:
            raise InvalidInput(
                f"batch of {rows} rows exceeds max_batch_size {limit} of {self._label}"
            )
        if len(self._queue) >= self.config.max_queue:
            raise Overloaded(
                f"queue of {self._label} is full ({self.config.max_queue} requests waiting)"
            )
        future: asyncio.Future[Arrays] = loop.create_future()
        self._queue.append(_Item(inputs, rows, deadline, future))
        self._rows_queued += rows
        if self._free:
            self._pump()
        return await future

    async def close(self) -> None:
        """Stop taking requests, finish everything queued and in flight."""
        self._closing = True
        if self._loop is None or self._idle is None:
            return
        self._pump()
        if self._queue or self._in_flight:
            self._idle.clear()
            await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()

    def _pump(self) -> None:
        delay = self.config.max_queue_delay_s
        while self._free and self._queue:
            if delay > 0 and not self._closing and self._rows_queued < self._full:
                due = self._queue[0].enqueued + delay
                if time.monotonic() < due:
                    if self._timer is None:
                        assert self._loop is not None
                        self._timer = self._loop.call_at(
                            self._loop.time() + (due - time.monotonic()), self._on_timer
                        )
                    return
            batch = self._take()
            if not batch:
                break
            self._free -= 1
            self._in_flight += 1
            if self._in_flight == 1 and self._inline(batch):
                # Nothing else is running and the model answers in microseconds: the
                # executor round trip (two thread hand-offs and a loop wake-up) costs more
                # than the batch (offload benchmark: +34 % req/s at batch 1 x 8). The loop
                # is held for about the predicted batch time only.
                self.inline_batches += 1
                self._settle(batch, self._compute(batch))
                continue
            cf = self._executor.submit(self._compute, batch)
            cf.add_done_callback(functools.partial(self._on_done, batch))
        if not self._queue and not self._in_flight and self._idle is not None:
            self._idle.set()

    def _inline(self, batch: list[_Item]) -> bool:
        limit = self.config.inline_max_s
        if limit <= 0:
            return False
        predicted = self._service.predict(sum(item.rows for item in batch))
        return predicted is not None and predicted <= limit

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _take(self) -> list[_Item]:
        cfg = self.config
        queue = self._queue
        target = cfg.max_batch_size or 1
        if cfg.preferred_sizes:
            fitting = [p for p in cfg.preferred_sizes if p <= min(self._rows_queued, target)]
            if fitting:
                target = max(fitting)
        now = time.monotonic()
        batch: list[_Item] = []
        rows = 0
        signature = None
        while queue:
            item = queue[0]
            if item.future.done():  # the caller went away (gRPC cancels at its deadline)
                queue.popleft()
                self._rows_queued -= item.rows
                if item.deadline is not None and item.deadline <= now:
                    self._observer.expired()
                continue
            if item.deadline is not None and item.deadline <= now:
                queue.popleft()
                self._rows_queued -= item.rows
                self._observer.expired()
                item.future.set_exception(
                    DeadlineExceeded(f"deadline passed after {now - item.enqueued:.4f}s in queue")
                )
                continue
            if batch and (
                rows + item.rows > target or item.signature != signature or not cfg.max_batch_size
            ):
                break
            queue.popleft()
            self._rows_queued -= item.rows
            signature = item.signature
            batch.append(item)
            rows += item.rows
        return batch

    def _compute(self, batch: list[_Item]) -> _Outcome:
        started = time.monotonic()
        observer = self._observer
        for item in batch:
            observer.queued(started - item.enqueued)
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {
                    name: np.concatenate([item.inputs[name] for item in batch])
                    for name in batch[0].inputs
                }
            gathered = time.monotonic()
            outputs = self._run(feeds)
            inferred = time.monotonic()
            total = sum(item.rows for item in batch)
            for name, array in outputs.items():
                if self.config.max_batch_size and (array.ndim == 0 or array.shape[0] != total):
                    raise BackendError(
                        f"{self._label} returned {array.shape[0] if array.ndim else 0} rows of "
                        f"{name!r} for {total} input rows"
                    )
            if len(batch) == 1:
                parts = [outputs]
            else:
                parts = []
                offset = 0
                for item in batch:
                    end = offset + item.rows
                    parts.append({name: array[offset:end] for name, array in outputs.items()})
                    offset = end
            ended = time.monotonic()
            observer.batch(
                total, len(batch), gathered - started, inferred - gathered, ended - inferred
            )
            self._service.observe(ended - started, total)
            return parts, None
        except EdgecloudError as exc:
            return None, exc
        except Exception as exc:  # a backend bug must reach every waiting caller, typed
            log.exception("batch of %s failed", self._label)
            return None, BackendError(f"inference failed in {self._label}: {exc}")

    def _on_done(self, batch: list[_Item], cf: Future[_Outcome]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._finish, batch, cf)

    def _finish(self, batch: list[_Item], cf: Future[_Outcome]) -> None:
        try:
            outcome = cf.result()
        except BaseException as exc:  # the executor itself failed (shut down, cancelled)
            outcome = None, Unavailable(f"executor of {self._label} stopped: {exc!r}")
        self._settle(batch, outcome)
        self._pump()

    def _settle(self, batch: list[_Item], outcome: _Outcome) -> None:
        """Hand a finished batch's rows (or its error) to its callers; frees an instance."""
        self._in_flight -= 1
        self._free += 1
        parts, error = outcome
        if parts is None:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error or BackendError("inference failed"))
        else:
            for item, part in zip(batch, parts, strict=True):
                if not item.future.done():
                    item.future.set_result(part)
