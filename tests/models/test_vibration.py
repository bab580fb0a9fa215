from __future__ import annotations

import numpy as np

from models import vibration


def test_windows_shape_and_determinism() -> None:
    a = vibration.windows(8, seed=3)
    assert a.shape == (8, vibration.WINDOW, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, vibration.windows(8, seed=3))
    assert not np.array_equal(a, vibration.windows(8, seed=4))


def _spectrum(x: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.rfft(x - x.mean(axis=0), axis=0)).mean(axis=1)


def test_faults_have_their_signatures() -> None:
    machine = vibration.Machine(shaft_hz=25.0, noise_std=0.01)
    t = np.arange(2048) / vibration.SAMPLE_RATE_HZ
    rng = np.random.default_rng(0)
    freqs = np.fft.rfftfreq(2048, 1 / vibration.SAMPLE_RATE_HZ)
    at = {f: int(np.argmin(np.abs(freqs - f))) for f in (25.0, 50.0, 180.0)}
    healthy = _spectrum(machine.signal(t, rng))
    imbalance = _spectrum(machine.signal(t, rng, "imbalance", 1.0))
    misalignment = _spectrum(machine.signal(t, rng, "misalignment", 1.0))
    bearing = _spectrum(machine.signal(t, rng, "bearing", 1.0))
    assert imbalance[at[25.0]] > 2 * healthy[at[25.0]]
    assert misalignment[at[50.0]] > 2 * healthy[at[50.0]]
    band = slice(at[180.0] - 40, at[180.0] + 40)
    assert bearing[band].sum() > 5 * healthy[band].sum()


def test_stream_is_continuous_across_chunks() -> None:
    one = vibration.VibrationStream(seed=7)
    two = vibration.VibrationStream(seed=7)
    whole = one.read(300)
    parts = np.concatenate([two.read(100), two.read(57), two.read(143)])
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    two.set_fault("bearing", 2.0)
    assert two.fault is vibration.Fault.BEARING and two.read(10).shape == (10, 3)
