"""Load shapes: the readings-per-second multiplier of a fleet as a function of time.

A shape is a pure function of seconds since the start of the run, so a scenario is
reproducible and the collector can compute what *should* have been sent.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def factor(self, t: float) -> float:  # pragma: no cover - overridden
        raise NotImplementedError


class Steady(_Shape):
    """Constant rate."""

    kind: Literal["steady"] = "steady"

    def factor(self, t: float) -> float:
        return 1.0


class Ramp(_Shape):
    """Linear from ``start`` to ``end`` times the base rate over ``[t0, t1]``, flat outside."""

    kind: Literal["ramp"] = "ramp"
    start: float = Field(default=0.1, ge=0)
    end: float = Field(default=1.0, ge=0)
    t0: float = Field(default=0.0, ge=0)
    t1: float = Field(default=60.0, gt=0)

    def factor(self, t: float) -> float:
        if t <= self.t0:
            return self.start
        if t >= self.t1:
            return self.end
        return self.start + (self.end - self.start) * (t - self.t0) / (self.t1 - self.t0)


class Burst(_Shape):
    """Base rate with bursts of ``factor`` times the rate at ``at`` seconds for ``length_s``.

    ``every_s`` > 0 repeats the burst periodically from the first ``at``.
    """

    kind: Literal["burst"] = "burst"
    at: tuple[float, ...] = (20.0,)
    length_s: float = Field(default=10.0, gt=0)
    multiplier: float = Field(default=3.0, ge=0)
    every_s: float = Field(default=0.0, ge=0)

    def active(self, t: float) -> bool:
        for start in self.at:
            if self.every_s > 0 and t >= start:
                if (t - start) % self.every_s < self.length_s:
                    return True
            elif start <= t < start + self.length_s:
                return True
        return False

    def factor(self, t: float) -> float:
        return self.multiplier if self.active(t) else 1.0


class Diurnal(_Shape):
    """A day compressed into ``period_s``: sinusoid between ``low`` and 1, peak at half period."""

    kind: Literal["diurnal"] = "diurnal"
    period_s: float = Field(default=60.0, gt=0)
    low: float = Field(default=0.2, ge=0, le=1)

    def factor(self, t: float) -> float:
        phase = (1 - math.cos(2 * math.pi * t / self.period_s)) / 2
        return self.low + (1 - self.low) * phase


Shape = Annotated[Steady | Ramp | Burst | Diurnal, Field(discriminator="kind")]


def in_burst(shape: _Shape, t: float) -> bool:
    """True while a burst shape is above its base rate (used to window offload share)."""
    return isinstance(shape, Burst) and shape.active(t)
