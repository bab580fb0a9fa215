from __future__ import annotations

import numpy as np
import pytest

from models import basicmotions


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_real_data(split: str) -> None:
    x, labels = basicmotions.load(split)
    assert x.shape == (40, 100, 6) and x.dtype == np.float32
    assert sorted(set(labels)) == sorted(basicmotions.LABELS)
    assert all(labels.count(c) == 10 for c in basicmotions.LABELS)
    assert np.isfinite(x).all()
    # Running shakes the watch far more than standing: a sanity check on channel order.
    idx = basicmotions.label_indices(labels)
    acc_std = x[..., :3].std(axis=1).mean(axis=1)
    assert acc_std[idx == 1].mean() > 5 * acc_std[idx == 0].mean()


def test_load_returns_copies_and_rejects_bad_split() -> None:
    x, _ = basicmotions.load("train")
    x[0, 0, 0] = 1e9
    assert basicmotions.load("train")[0][0, 0, 0] != 1e9
    assert basicmotions.stream("test", 3).shape == (100, 6)
    with pytest.raises(ValueError):
        basicmotions.load("validation")  # type: ignore[arg-type]
