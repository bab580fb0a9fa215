"""Which model answers which sensor topic: ``--model NAME[=TOPIC_FILTER]`` bindings.

An agent serves several models at once (an IMU stream and a vibration stream on one
machine need different models). Each model is bound to an MQTT topic filter; a model
bound without a filter is the *default* and takes every reading no filter matches. A
reading that neither a filter nor a default takes is dead-lettered with reason
``no-model`` and never blocks the others.

Filters are tried in the order the models were bound (flags first, then what the gateway
assigned); the first match wins, so overlapping filters are legal but order-dependent
(a warning names them). The agent subscribes to the smallest set of filters that covers
the base ``--topics-filter`` and every binding: mosquitto delivers one copy per matching
subscription, so a filter covered by another would double every reading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bus.topics import check_filter
from models.errors import ConfigError, InvalidInput
from models.manifest import validate_model_name

log = logging.getLogger(__name__)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 matching of ``topic`` against ``topic_filter`` (``+`` and ``#``)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True  # also matches the parent level ("a/#" matches "a")
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def covers(outer: str, inner: str) -> bool:
    """True when every topic ``inner`` matches is matched by ``outer`` too."""
    o, i = outer.split("/"), inner.split("/")
    for k, level in enumerate(o):
        if level == "#":
            return True
        if k >= len(i) or i[k] == "#":
            return False
        if level == "+":
            continue
        if i[k] == "+" or i[k] != level:
            return False
    return len(o) == len(i)


@dataclass(frozen=True, slots=True)
class Binding:
    """One model an agent serves: name, optional pinned version, optional topic filter."""

    name: str
    version: int | None = None
    topics: str | None = None  # None: the default model

    @classmethod
    def parse(cls, text: str) -> Binding:
        """``NAME``, ``NAME:VERSION``, ``NAME=FILTER`` or ``NAME:VERSION=FILTER``."""
        ref, sep, filt = text.strip().partition("=")
        name, _, version = ref.partition(":")
        try:
            validate_model_name(name)
        except ValueError as exc:
            raise ConfigError(f"--model {text!r}: {exc}") from None
        if version and not (version.isascii() and version.isdigit() and int(version) >= 1):
            raise ConfigError(f"--model {text!r}: version must be a positive integer")
        if sep and not filt:
            raise ConfigError(f"--model {text!r}: empty topic filter after '='")
        try:
            topics = check_filter(filt) if sep else None
        except InvalidInput as exc:
            raise ConfigError(f"--model {text!r}: {exc.message}") from None
        return cls(name, int(version) if version else None, topics)

    def __str__(self) -> str:
        ref = self.name if self.version is None else f"{self.name}:{self.version}"
        return ref if self.topics is None else f"{ref}={self.topics}"


class Bindings:
    """The agent's model -> topic-filter table (event loop writes, MQTT thread reads).

    Writers replace the whole tuple, so the MQTT thread always sees a consistent table.
    """

    def __init__(self) -> None:
        self._filters: tuple[tuple[str, str], ...] = ()  # (filter, model) in bind order
        self._default: str | None = None

    def bind(self, model: str, topics: str | None) -> None:
        """Bind ``model`` to ``topics`` (None: make it the default), replacing its old binding."""
        rest = tuple((f, m) for f, m in self._filters if m != model)
        if topics is None:
            if self._default not in (None, model):
                raise ConfigError(
                    f"{model} and {self._default} both have no topic filter: only one model "
                    "may be the default (bind the other with NAME=FILTER)"
                )
            self._filters, self._default = rest, model
            return
        try:
            check_filter(topics)
        except InvalidInput as exc:
            raise ConfigError(exc.message) from None
        for f, m in rest:
            if _overlap(f, topics):
                log.warning(
                    "topic filters of %s (%s) and %s (%s) overlap: %s wins", m, f, model, topics, m
                )
        self._filters = (*rest, (topics, model))
        if self._default == model:
            self._default = None

    def unbind(self, model: str) -> None:
        self._filters = tuple((f, m) for f, m in self._filters if m != model)
        if self._default == model:
            self._default = None

    def resolve(self, topic: str) -> str | None:
        """The model that answers ``topic`` (None: no model is bound to it)."""
        for f, m in self._filters:
            if topic_matches(f, topic):
                return m
        return self._default

    def topics_of(self, model: str) -> str | None:
        return next((f for f, m in self._filters if m == model), None)

    def subscriptions(self, base: list[str]) -> list[str]:
        """The fewest filters covering ``base`` and every bound filter (order kept)."""
        wanted = [*base, *(f for f, _ in self._filters)]
        out: list[str] = []
        for f in wanted:
            if any(covers(g, f) for g in out):
                continue
            out = [g for g in out if not covers(f, g)]
            out.append(f)
        return out


def _overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters (neither need cover the other)."""
    x, y = a.split("/"), b.split("/")
    for k in range(max(len(x), len(y))):
        p = x[k] if k < len(x) else None
        q = y[k] if k < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:
            return False
        if p != "+" and q != "+" and p != q:
            return False
    return True
