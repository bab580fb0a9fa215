"""``vibration-anomaly``: distance of a window's spectrum from the healthy fleet's.

Graph: remove DC, Hann window, fixed DFT (two MatMuls), power, pooling into log band
energies per axis plus overall and peak level per axis, z-score against healthy
statistics, score = RMS of the largest z-scores (a fault moves a few features a lot;
averaging all of them would dilute it).
Trained on healthy windows only; AUC measured against injected faults.
"""

from __future__ import annotations

import numpy as np

from models import vibration
from models.recipes.graph import GraphBuilder, apply_variant, run_partial
from models.recipes.motion import Trained

N_BANDS = 24
TOP_K = 4
THRESHOLD_QUANTILE = 0.995


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores = np.concatenate([negatives, positives])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    pos_ranks = ranks[len(negatives) :].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return float((pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _band_features(g: GraphBuilder, window: int) -> str:
    chan_first = g.op("Transpose", g.input, perm=[0, 2, 1])  # (B, C, W)
    centered = g.op("Sub", chan_first, g.reduce("ReduceMean", chan_first, [2], keepdims=1))
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)).astype(np.float32)
    tapered = g.op("Mul", centered, g.const(hann, "hann"))
    t = np.arange(window)[:, None]
    k = np.arange(window // 2 + 1)[None, :]
    re = g.op("MatMul", tapered, g.const(np.cos(2 * np.pi * t * k / window), "dft_cos"))
    im = g.op("MatMul", tapered, g.const(np.sin(2 * np.pi * t * k / window), "dft_sin"))
    power = g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im))
    edges = np.unique(np.geomspace(2, window // 2 + 1, N_BANDS + 1).astype(int))
    pool = np.zeros((window // 2 + 1, len(edges) - 1), dtype=np.float32)
    for b in range(len(edges) - 1):
        pool[edges[b] : edges[b + 1], b] = 1.0
    energy = g.op("MatMul", power, g.const(pool, "bands"))
    log_energy = g.op("Log", g.op("Add", energy, g.const(np.float32(1e-2))))
    # Overall level and peak band per axis: imbalance mostly raises the level, and the
    # shaft-speed spread smears it across neighbouring bands.
    level = g.op("Log", g.reduce("ReduceSum", energy, [2]))
    peak = g.op("Log", g.reduce("ReduceMax", energy, [2]))
    return g.op("Concat", g.op("Flatten", log_energy, axis=1), level, peak, axis=1)


def build(name: str = "vibration-anomaly", *, seed: int, variant: str = "normal") -> Trained:
    window = vibration.WINDOW
    g = GraphBuilder("input", ("batch", window, len(vibration.CHANNELS)))
    feats = _band_features(g, window)
    healthy = vibration.windows(1200, seed=1000 + seed)
    f = run_partial(g, feats, healthy[:800])
    mu, sigma = f.mean(axis=0), f.std(axis=0) + 1e-3
    z = g.op("Div", g.op("Sub", feats, g.const(mu, "mu")), g.const(sigma, "sigma"))
    top = g.op(
        "TopK", g.op("Abs", z), g.const(np.array([TOP_K], dtype=np.int64)), axis=1, n_outputs=2
    )
    score = g.op("Sqrt", g.reduce("ReduceMean", g.op("Mul", top, top), [1], keepdims=1))  # (B, 1)
    threshold = float(np.quantile(run_partial(g, score, healthy[800:]), THRESHOLD_QUANTILE))
    out = apply_variant(g, score, variant, heavy_repeats=8)
    model = g.model(out, ("batch", 1), "score")
    # Held-out evaluation on machines the model never saw (a different generator seed).
    test_healthy = run_partial(g, score, vibration.windows(400, seed=7000 + seed))[:, 0]
    faulty = np.concatenate(
        [
            run_partial(g, score, vibration.windows(200, fault=f, seed=8000 + i + seed))[:, 0]
            for i, f in enumerate(fault for fault in vibration.Fault if fault.value != "none")
        ]
    )
    vectors = np.concatenate(
        [
            vibration.windows(3, seed=9000 + seed),
            vibration.windows(1, fault="imbalance", seed=9001 + seed),
            vibration.windows(1, fault="misalignment", seed=9002 + seed),
            vibration.windows(1, fault="bearing", seed=9003 + seed),
        ]
    )
    detail = f"{N_BANDS} log bands + level + peak x 3 axes, top-{TOP_K} RMS z-score"
    return Trained(
        model=model,
        description=f"Vibration anomaly score ({detail}); seed={seed}, variant={variant}",
        accuracy=None,
        auc=auc(test_healthy, faulty),
        test_samples=len(test_healthy) + len(faulty),
        vector_inputs=vectors,
        threshold=round(threshold, 4),
    )
