"""Wave plans: how a rollout's targets are split into cumulative waves.

Sizes are cumulative ("10%, 50%, 100%" reaches 10 %, then 50 %, then all targets), so
an operator reads them as coverage; a size that reaches no new agent is skipped and the
last wave always takes the rest.
"""

from __future__ import annotations

import math
import re

from models.errors import InvalidInput

_WAVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def wave_size(spec: str, total: int) -> int:
    """'25%' or '3' -> cumulative number of targets reached after the wave."""
    m = _WAVE.fullmatch(spec)
    if not m:
        raise InvalidInput(f"bad wave {spec!r}: use a percentage like '10%' or a count like '2'")
    value = float(m.group(1))
    if m.group(2):
        if not 0 < value <= 100:
            raise InvalidInput(f"wave percentage must be in (0, 100]: {spec!r}")
        return max(1, math.ceil(total * value / 100))
    if value < 1 or value != int(value):
        raise InvalidInput(f"wave count must be a positive integer: {spec!r}")
    return min(total, int(value))


def plan_waves(agent_ids: list[str], waves: list[str], strategy: str) -> list[list[str]]:
    """Split targets into waves; sizes are cumulative and the last wave takes the rest."""
    if not agent_ids:
        raise InvalidInput("the selector matches no online agent")
    if strategy == "all-at-once":
        return [list(agent_ids)]
    if not waves:
        raise InvalidInput("a canary rollout needs at least one wave")
    total = len(agent_ids)
    plan: list[list[str]] = []
    reached = 0
    for spec in waves:
        upto = wave_size(spec, total)
        if upto > reached:
            plan.append(agent_ids[reached:upto])
            reached = upto
    if reached < total:
        plan.append(agent_ids[reached:])
    return plan
