"""The JSON record format and the outage rule, on records (the programs' use of them is
tested on the real processes in test_logs.py)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from shell.logs import Outage, make_formatter


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_json_record_is_one_line_with_exception_text() -> None:
    line = make_formatter("json").format(_record("two\nlines %s", "é", exc=True))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "edge_agent.x"
    assert out["message"] == "two\nlines é"
    assert out["exc"].startswith("Traceback") and "ValueError: bad" in out["exc"]
    assert out["ts"].endswith("Z")


def test_text_format_is_the_classic_line() -> None:
    line = make_formatter("text").format(_record("hello %d", 3))
    assert line.endswith(" ERROR edge_agent.x: hello 3")


def test_outage_warns_once_then_debug_then_info(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.outage")
    outage = Outage(log, "broker mqtt://b:1883")
    with caplog.at_level(logging.DEBUG, logger="tests.outage"):
        for _ in range(3):
            outage.failed(ConnectionRefusedError(111, "refused\nsecond line"), 0.5)
        outage.recovered()
        outage.recovered()  # no outage: nothing to say
        outage.failed("lost")
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "INFO", "WARNING"]
    first = caplog.records[0].getMessage()
    assert first == "broker mqtt://b:1883 unreachable ([Errno 111] refused); retrying in 0.5s"
    assert caplog.records[3].getMessage().startswith("broker mqtt://b:1883 reachable again after")
    assert outage.down
