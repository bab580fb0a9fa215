"""The configuration twin on the agent: live settings from the signed desired state.

The gateway's desired-state document may carry a ``config`` section
(:class:`bus.desired.WantedConfig`): overrides of the settings that are safe to change
while readings flow (:data:`bus.desired.LIVE_SETTINGS`). Precedence: the agent's flags
(and environment) are the boot-time defaults; the twin's values replace them; a value
the twin no longer carries falls back to its flag, and an agent document with
``config: null`` means flags only.

A section is judged whole, by the same settings model as the flags: the flags with the
overrides laid over them must make a valid :class:`EdgeSettings`. One bad value refuses
the whole section; the agent keeps what it ran with and reports ``state: failed`` and
the reason (log and heartbeat). An accepted section is applied on the event loop by
:meth:`edge_agent.app.pipeline.Pipeline.reconfigure`: readings already windowed keep their
deadlines and their routing; new windows get the new SLO and new batches the new policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bus.desired import LIVE_SETTINGS, ConfigReport, Desired, WantedConfig, check_live
from edge_agent.app.settings import EdgeSettings
from models.errors import EdgecloudError, InvalidInput

log = logging.getLogger(__name__)


def overlay(base: EdgeSettings, values: dict[str, Any]) -> EdgeSettings:
    """``base`` with ``values`` laid over it, validated by ``EdgeSettings``; InvalidInput
    names the first bad setting."""
    check_live(values)
    try:
        # model_validate, not the constructor: only these values, never the environment.
        return EdgeSettings.model_validate(base.model_dump() | values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise InvalidInput(f"{where}: {err['msg']} (got {err.get('input')!r:.80})") from None


class ConfigTwin:
    """Judges config sections and hands accepted settings to ``apply`` (on the loop)."""

    def __init__(self, flags: EdgeSettings, apply: Callable[[EdgeSettings], None]) -> None:
        self.flags = flags
        self.effective = flags
        self._apply = apply
        self.version = 0
        self.rollout_id: str | None = None
        self.values: dict[str, Any] = {}
        self.refused: tuple[int, str] | None = None  # (version, reason) of the last refusal
        self.refusals = 0

    def on_desired(self, desired: Desired) -> bool:
        """Act on the config section of an accepted document; True when the report changed.

        A site document without a section leaves the config alone (the agent's own
        document decides); the agent's own document without one means flags only."""
        wanted = desired.config
        if wanted is None:
            if desired.target_kind != "agent" or (self.version == 0 and self.refused is None):
                return False
            wanted = WantedConfig(version=self.version, values={})
            return self._take(wanted, reset=True)
        if wanted.version == self.version and wanted.values == self.values:
            if self.refused is None:
                return False  # the retained copy of what runs (redelivery, restart)
            self.refused = None  # the gateway asks for what runs again: nothing refused
            return True
        if self.refused is not None and self.refused[0] == wanted.version:
            return False  # already refused, and reported
        return self._take(wanted)

    def _take(self, wanted: WantedConfig, *, reset: bool = False) -> bool:
        try:
            settings = overlay(self.flags, dict(wanted.values))
        except EdgecloudError as exc:
            self.refusals += 1
            reason = f"config version {wanted.version} refused whole: {exc.message}"
            self.refused = (wanted.version, reason)
            log.error("%s", reason)
            return True
        self._apply(settings)
        self.effective = settings
        self.version = 0 if reset else wanted.version
        self.rollout_id = None if reset else wanted.rollout_id
        self.values = dict(wanted.values)
        self.refused = None
        changed = {k: getattr(settings, k) for k in sorted(self.values)}
        log.info("config version %d applied: %s", self.version, changed or "flags only")
        return True

    def report(self) -> dict[str, Any]:
        """The heartbeat ``config`` field."""
        eff = self.effective
        return ConfigReport(
            version=self.version,
            rollout_id=self.rollout_id,
            state="failed" if self.refused else "ok",
            reason=self.refused[1] if self.refused else None,
            refused_version=self.refused[0] if self.refused else None,
            effective={k: getattr(eff, k) for k in LIVE_SETTINGS},
            overrides=sorted(self.values),
            refusals=self.refusals,
        ).as_dict()
