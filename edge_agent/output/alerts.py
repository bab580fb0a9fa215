"""The firing/resolved rule of alerts (the message itself: :mod:`bus.alerts`).

An alert is published on ``alerts/{site}/{device}`` (QoS 1, see
:mod:`edge_agent.output.completion`). Besides the original fields (``ts, site, device, stream,
kind, detail, seq, agent``) every alert carries what a router needs to deduplicate:

* ``key``: stable per alerting condition, ``{kind}:{site}/{device}/{stream}``. The same
  stream always yields the same key, whichever agent served it, so Alertmanager
  (``labels``) or a Node-RED flow (``msg.topic``) can fold repeats together.
* ``severity``: ``info`` for a class change, ``warning`` for an anomaly.
* ``state``: ``firing`` or ``resolved``; ``starts_at`` is when the condition began.

The rules (documented in docs/architecture.md, "Alerts"):

* **Class change** is a one-shot ``info`` event: ``state: firing`` at the change, never
  resolved by the agent (there is no "unchanged class" condition to end). A router treats
  it as an event: the Alertmanager bridge gives it an ``endsAt`` a few minutes later.
  The key is per stream, so the newest change replaces the previous one.
* **Anomaly** fires once, when a window's score crosses above the model's threshold
  while the stream is not already firing; further anomalous windows send nothing (the
  condition is the same). It resolves when the score stays at or below the threshold for
  :data:`RESOLVE_AFTER` consecutive windows, which is one ``resolved`` message with the
  same key and ``starts_at``. Non-finite outputs neither fire nor count towards resolving.

Before this the agent sent one anomaly alert per anomalous window; the JSON only gained
fields, so consumers that read ``kind``/``detail`` keep working.
"""

from __future__ import annotations

from typing import Any

from bus.alerts import State

RESOLVE_AFTER = 3  # consecutive windows at or below the threshold that end an anomaly
MAX_FIRING = 10_000  # streams with an anomaly firing at once (oldest forgotten beyond)


def alert_key(kind: str, site: str, device: str, stream: str) -> str:
    return f"{kind}:{site}/{device}/{stream}"


class _Firing:
    __slots__ = ("below", "starts_at", "stream")

    def __init__(self, stream: Any, starts_at: float) -> None:
        self.stream = stream  # held so its id() cannot be reused while we track it
        self.starts_at = starts_at
        self.below = 0


class AnomalyEpisodes:
    """Which streams have an anomaly firing, and how long each has been quiet since.

    Keyed by the stream's window object (a new agent or a re-created stream starts
    clean); only firing streams are kept, so memory follows the number of open
    anomalies, capped at ``max_firing`` (the oldest episode is forgotten beyond it).
    """

    def __init__(self, resolve_after: int = RESOLVE_AFTER, max_firing: int = MAX_FIRING) -> None:
        self.resolve_after = resolve_after
        self.max_firing = max_firing
        self._firing: dict[int, _Firing] = {}

    def __len__(self) -> int:
        return len(self._firing)

    def observe(self, stream: Any, anomalous: bool, now: float) -> tuple[State, float] | None:
        """Feed one finite window; returns ``(state, starts_at)`` when the state changes."""
        ep = self._firing.get(id(stream))
        if ep is not None and ep.stream is not stream:
            ep = None  # pragma: no cover - id reuse is prevented by holding the stream
        if anomalous:
            if ep is not None:
                ep.below = 0
                return None
            if len(self._firing) >= self.max_firing:
                self._firing.pop(next(iter(self._firing)))
            self._firing[id(stream)] = _Firing(stream, now)
            return "firing", now
        if ep is None:
            return None
        ep.below += 1
        if ep.below < self.resolve_after:
            return None
        del self._firing[id(stream)]
        return "resolved", ep.starts_at


#: The process's anomaly episodes. Module level because the window state that would
#: naturally hold it has fixed slots; keyed by stream object, so agents sharing a process
#: (tests, the simulator) never see each other's episodes.
EPISODES = AnomalyEpisodes()
