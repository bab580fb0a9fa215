"""The dispatcher's queue: requests by deadline, a batch from the head, overflow from the tail.

A binary heap ordered by (deadline, arrival order). The head is the earliest deadline, the
batch the dispatcher forms next. Under sustained overload the *tail* (latest deadlines,
the most slack) is what the cloud should take (see ``Dispatcher._overflow``): the tail
is reached by sorting the list once (a sorted list is a valid heap, and popping its end
keeps it one), and the queue remembers that it is sorted until the next push or head pop.
"""

from __future__ import annotations

import heapq
import itertools

from edge_agent.routing.batch import Request


class EdfQueue:
    """Earliest-deadline-first queue of requests (event loop only)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Request]] = []
        self._tie = itertools.count()
        self._sorted = True

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push_many(self, requests: list[Request]) -> None:
        heap, tie = self._heap, self._tie
        for r in requests:
            heapq.heappush(heap, (r.deadline, next(tie), r))
        self._sorted = False

    @property
    def head(self) -> Request:
        """The request with the earliest deadline (the queue must not be empty)."""
        return self._heap[0][2]

    def pop_head(self, n: int) -> list[Request]:
        """The ``n`` earliest-deadline requests, in deadline order."""
        heap = self._heap
        self._sorted = False
        return [heapq.heappop(heap)[2] for _ in range(n)]

    def tail_deadline(self, n: int) -> float:
        """The earliest deadline among the ``n`` latest-deadline requests."""
        self._sort()
        return self._heap[-n][0]

    def pop_tail(self, n: int) -> list[Request]:
        """The ``n`` latest-deadline requests, in deadline order."""
        self._sort()
        heap = self._heap
        return [heap.pop()[2] for _ in range(n)][::-1]

    def _sort(self) -> None:
        if not self._sorted:
            self._heap.sort()
            self._sorted = True
