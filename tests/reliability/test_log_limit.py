"""Repeated failures log once, then one summary per interval, with how many were held."""

from __future__ import annotations

import logging

import pytest

from edge_agent.durability.log_limit import LogLimiter


def test_repeats_are_counted_into_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = LogLimiter(logging.getLogger("t.limit"), every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, "t.limit"):
        for _ in range(5000):  # one per reading for 5 s of a full disk
            limited(logging.ERROR, "write failed: %s", "ENOSPC")
            now[0] += 0.001
        now[0] += 10.0
        limited(logging.ERROR, "write failed: %s", "ENOSPC")
        limited.reset()  # recovered: the next failure is news again
        limited(logging.ERROR, "write failed: %s", "EIO")
    assert [r.getMessage() for r in caplog.records] == [
        "write failed: ENOSPC",
        "write failed: ENOSPC (and 4999 more like it in the last 10s)",
        "write failed: EIO",
    ]
