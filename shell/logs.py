"""The one logging setup of every process (edge-agent, offload-server, cloud-gateway,
fleet-sim): level and format come from settings, and shared conventions live here.

``--log-format text`` is the classic ``TIME LEVEL LOGGER: MESSAGE`` line; ``json`` is one
JSON object per line (``ts``, ``level``, ``logger``, ``message``, plus ``exc`` / ``stack``
when the record carries them) for log shippers such as Fluent Bit, Vector or Loki's
promtail, which would otherwise have to parse free text. Here in ``models`` because it is
the lowest package every process already imports (like :mod:`shell.cli`), and
because the container images copy the packages by name: a new top-level package would
be missing from them.

:class:`Outage` is the one rule for "a dependency went away": WARNING once per outage,
DEBUG for every retry, INFO when it is back, so the same event reads the same in every
process and a broker that is down for an hour does not write thousands of lines.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any, TextIO

from pydantic import BeforeValidator

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_edgecloud_handler"  # marks the handler setup_logging installed


def _check_level(value: object) -> str:
    text = str(value).strip().upper()
    if text not in LEVELS:
        # pydantic reports a ValueError as "log_level: Value error, <this>".
        raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LEVELS)}")
    return text


def _check_format(value: object) -> str:
    text = str(value).strip().lower()
    if text not in FORMATS:
        raise ValueError(f"unknown log format {value!r}; use 'text' or 'json'")
    return text


#: Settings field types: any case on input, canonical once validated. Checked by pydantic
#: (not by argparse ``choices``, whose error is the whole usage text) so a bad flag and a
#: bad env value give the same one-line configuration error.
LogLevel = Annotated[str, BeforeValidator(_check_level)]
LogFormat = Annotated[str, BeforeValidator(_check_format)]

LOG_LEVEL_HELP = "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
LOG_FORMAT_HELP = "Log format: text (human) or json (one object per line, for log shippers)."


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Configure the root logger: one handler on ``stream`` (stderr by default).

    Like ``logging.basicConfig``, it leaves a root logger that someone else configured
    alone (pytest's capture when a test calls ``main()`` in-process); a handler of an
    earlier call is replaced.
    """
    root = logging.getLogger()
    if any(not getattr(h, _OURS, False) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(_check_format(fmt)))
    setattr(handler, _OURS, True)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()  # a StreamHandler leaves its stream open
    root.addHandler(handler)
    root.setLevel(_check_level(level))
    # Python warnings (DeprecationWarning etc.) go through the same handler and format.
    logging.captureWarnings(True)


class Outage:
    """Log one dependency's reachability (a broker, a peer): WARNING on the first failure
    of an outage, DEBUG on every further retry, INFO once it is reachable again.

    Thread-safe: MQTT clients report from their network thread, startup code from the
    event loop.
    """

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic start of the current outage

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, reason: object, retry_s: float | None = None) -> None:
        retry = f"retrying in {retry_s:.1f}s" if retry_s is not None else "retrying"
        # One line, bounded: gRPC and socket errors can be long multi-line texts.
        lines = str(reason).strip().splitlines() or [""]
        reason = lines[0][:300]
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
        if first:
            self._log.warning("%s unreachable (%s); %s", self._what, reason, retry)
        else:
            self._log.debug("%s still unreachable (%s); %s", self._what, reason, retry)

    def recovered(self) -> None:
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            self._log.info("%s reachable again after %.1fs", self._what, time.monotonic() - since)
