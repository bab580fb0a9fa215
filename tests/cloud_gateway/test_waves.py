"""Wave plans: cumulative sizes as percentages or counts over the targets."""

from __future__ import annotations

import pytest

from cloud_gateway import canary
from models.errors import InvalidInput

AGENTS = [f"a{i:02d}" for i in range(20)]


def test_wave_plans() -> None:
    waves = canary.plan_waves(AGENTS, ["10%", "50%", "100%"], "canary")
    assert [len(w) for w in waves] == [2, 8, 10]
    assert [a for w in waves for a in w] == AGENTS
    assert [len(w) for w in canary.plan_waves(AGENTS, ["1", "5"], "canary")] == [1, 4, 15]
    assert canary.plan_waves(AGENTS, ["10%"], "all-at-once") == [AGENTS]
    assert [len(w) for w in canary.plan_waves(AGENTS[:3], ["1%", "2%"], "canary")] == [1, 2]
    assert [len(w) for w in canary.plan_waves(AGENTS[:2], ["5", "100%"], "canary")] == [2]
    for bad in (["0%"], ["150%"], ["x"], ["0"], ["1.5"]):
        with pytest.raises(InvalidInput):
            canary.plan_waves(AGENTS, bad, "canary")
    with pytest.raises(InvalidInput):
        canary.plan_waves([], ["100%"], "canary")
