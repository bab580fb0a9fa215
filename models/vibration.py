"""Synthetic rotating-machine vibration: shaft harmonics, noise, and injectable faults.

Used to train the ``vibration-anomaly`` model and by the simulators as sensor streams, so
both see the same physics. A :class:`Machine` is one shaft with its own speed and
harmonic mix; :meth:`Machine.signal` is a pure function of absolute time, so streaming in
chunks (:class:`VibrationStream`) and generating whole windows (:func:`windows`) agree.

Fault signatures (simplified textbook shapes):
- ``imbalance``: the 1x shaft-speed component grows, mostly radially (x, y).
- ``misalignment``: strong 2x (and 3x) components, also axially (z).
- ``bearing``: an outer-race defect rings a structural resonance at the ball-pass
  frequency (BPFO, about 3.58x shaft speed), seen as decaying high-frequency bursts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

SAMPLE_RATE_HZ = 512.0
WINDOW = 256
HOP = 128
CHANNELS: tuple[str, ...] = ("x", "y", "z")


class Fault(StrEnum):
    NONE = "none"
    IMBALANCE = "imbalance"
    MISALIGNMENT = "misalignment"
    BEARING = "bearing"


@dataclass(frozen=True)
class Machine:
    """One healthy shaft: speed, harmonic amplitudes/phases per axis, noise level."""

    shaft_hz: float = 25.0
    amplitudes: tuple[float, float, float] = (1.0, 0.3, 0.1)
    axis_gain: tuple[float, float, float] = (1.0, 0.8, 0.3)
    phases: tuple[float, ...] = field(default=(0.0,) * 9)
    noise_std: float = 0.08
    resonance_hz: float = 180.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Machine:
        """A plausible healthy machine; the spread is what the anomaly model must tolerate."""
        return cls(
            shaft_hz=float(rng.uniform(20.0, 30.0)),
            amplitudes=(
                float(rng.uniform(0.8, 1.2)),
                float(rng.uniform(0.2, 0.4)),
                float(rng.uniform(0.05, 0.15)),
            ),
            axis_gain=(1.0, float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.2, 0.4))),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 9)),
            noise_std=float(rng.uniform(0.06, 0.1)),
            resonance_hz=float(rng.uniform(150.0, 200.0)),
        )

    def signal(
        self,
        t: np.ndarray,
        rng: np.random.Generator,
        fault: Fault | str = Fault.NONE,
        severity: float = 1.0,
    ) -> np.ndarray:
        """Readings at times ``t`` (seconds): float32 of shape (len(t), 3)."""
        fault = Fault(fault)
        t = np.asarray(t, dtype=np.float64)
        amps = np.array(self.amplitudes, dtype=np.float64)
        gains = np.tile(np.array(self.axis_gain, dtype=np.float64), (3, 1))  # [harmonic, axis]
        if fault is Fault.IMBALANCE:
            amps[0] *= 1.0 + 1.5 * severity
        elif fault is Fault.MISALIGNMENT:
            amps[1] += 0.8 * severity
            amps[2] += 0.3 * severity
            gains[1:, 2] = 0.9  # misalignment shows up axially
        phases = np.array(self.phases, dtype=np.float64).reshape(3, 3)
        out = np.zeros((t.size, 3), dtype=np.float64)
        for h in range(3):
            arg = 2 * np.pi * (h + 1) * self.shaft_hz * t
            for axis in range(3):
                out[:, axis] += amps[h] * gains[h, axis] * np.sin(arg + phases[h, axis])
        if fault is Fault.BEARING:
            period = 1.0 / (3.58 * self.shaft_hz)
            tau = np.mod(t, period)
            burst = np.exp(-tau * 120.0) * np.sin(2 * np.pi * self.resonance_hz * tau)
            out += (0.9 * severity * burst)[:, None] * np.array([1.0, 0.7, 0.5])
        out += rng.normal(0.0, self.noise_std, size=out.shape)
        return out.astype(np.float32)


def windows(
    n: int,
    *,
    fault: Fault | str = Fault.NONE,
    severity: float = 1.0,
    seed: int = 0,
    machines: int = 16,
    window: int = WINDOW,
    sample_rate_hz: float = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """``n`` windows float32 (n, window, 3) from ``machines`` random machines at random times."""
    rng = np.random.default_rng(seed)
    fleet = [Machine.random(rng) for _ in range(machines)]
    out = np.empty((n, window, 3), dtype=np.float32)
    base = np.arange(window) / sample_rate_hz
    for i in range(n):
        machine = fleet[int(rng.integers(machines))]
        start = float(rng.uniform(0.0, 3600.0))
        sev = severity * float(rng.uniform(0.5, 1.5)) if fault != Fault.NONE else 0.0
        out[i] = machine.signal(start + base, rng, fault, sev)
    return out


class VibrationStream:
    """A continuous per-sample stream from one machine; faults can be switched on live."""

    def __init__(
        self,
        machine: Machine | None = None,
        *,
        seed: int = 0,
        sample_rate_hz: float = SAMPLE_RATE_HZ,
    ) -> None:
        self._rng = np.random.default_rng(seed)
        self.machine = machine or Machine.random(self._rng)
        self.sample_rate_hz = sample_rate_hz
        self.fault: Fault = Fault.NONE
        self.severity = 0.0
        self._sample = 0

    def set_fault(self, fault: Fault | str, severity: float = 1.0) -> None:
        self.fault = Fault(fault)
        self.severity = severity if self.fault is not Fault.NONE else 0.0

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` readings, float32 (n, 3); phase continues across calls."""
        t = (self._sample + np.arange(n)) / self.sample_rate_hz
        self._sample += n
        return self.machine.signal(t, self._rng, self.fault, self.severity)
