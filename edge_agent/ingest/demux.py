"""The MQTT thread's entry point: which served model's pipeline a reading belongs to.

Every reading goes ``MqttLink`` -> :class:`Demux` -> the :class:`~edge_agent.ingest.core.AgentCore`
of the model bound to its topic (:mod:`edge_agent.ingest.bindings`). A topic no binding takes is
dead-lettered with reason ``no-model`` here, so it never reaches, or blocks, a model.
The topic -> core lookup is cached (one dict lookup per reading); the cache is dropped
whenever a model is attached, detached or re-bound, and bounded against topic storms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.ingest.bindings import Bindings
from edge_agent.ingest.core import AgentCore

log = logging.getLogger(__name__)

_CACHE_LIMIT = 100_000


class Demux:
    """Routes readings to the cores of ready models (the event loop attaches them)."""

    def __init__(
        self, bindings: Bindings, dead_letter: Callable[[str, bytes, str, str], None]
    ) -> None:
        self.bindings = bindings
        self._dead_letter = dead_letter
        self._cores: dict[str, AgentCore] = {}  # model -> core, replaced whole on change
        self._route: dict[str, AgentCore | None] = {}

    # -- event loop -------------------------------------------------------------------
    def attach(self, model: str, core: AgentCore) -> None:
        """``model`` is loaded: its readings go to ``core`` from now on."""
        self._cores = {**self._cores, model: core}
        self._route = {}

    def detach(self, model: str) -> None:
        self._cores = {m: c for m, c in self._cores.items() if m != model}
        self._route = {}

    def rebound(self) -> None:
        """The bindings changed: forget every cached topic."""
        self._route = {}

    # -- MQTT thread ------------------------------------------------------------------
    def _core(self, topic: str) -> AgentCore | None:
        route = self._route
        if topic in route:
            return route[topic]
        model = self.bindings.resolve(topic)
        core = self._cores.get(model) if model is not None else None
        if len(route) >= _CACHE_LIMIT:
            route.clear()
        route[topic] = core
        return core

    def ingest(self, topic: str, payload: bytes, arrival: float) -> None:
        core = self._core(topic)
        if core is None:
            self._no_model(topic, payload)
        else:
            core.ingest(topic, payload, arrival)

    def ingest_acked(self, topic: str, payload: bytes, arrival: float) -> None:
        core = self._core(topic)
        if core is None:
            self._no_model(topic, payload)
        else:
            core.ingest_acked(topic, payload, arrival)

    def end_of_burst(self) -> None:
        for core in self._cores.values():
            core.end_of_burst()

    def mid_burst(self) -> None:
        for core in self._cores.values():
            core.mid_burst()

    def tick(self, now: float) -> None:
        for core in self._cores.values():
            core.release_expired(now)

    def _no_model(self, topic: str, payload: bytes) -> None:
        model = self.bindings.resolve(topic)
        detail = (
            f"model {model} is not loaded yet"
            if model is not None
            else "no served model is bound to this topic"
        )
        self._dead_letter(topic, payload, "no-model", detail)
