"""The local batch job: real inference, and hedge twins that lost the race skip compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.model.slot import Loaded
from edge_agent.routing.batch import BatchDone, Request, run_and_complete
from models.backends import load_backend
from models.repository import ModelRepository


def _loaded(repo: Path) -> Loaded:
    r = ModelRepository(repo, check=False)
    return Loaded(
        load_backend(r.model_path("motion-edge"), "onnxruntime"), r.manifest("motion-edge")
    )


def _batch(n: int) -> list[Request]:
    rng = np.random.default_rng(1)
    return [
        Request(None, rng.normal(size=(100, 6)).astype(np.float32), i, 0.0, 0.0, 1.0)
        for i in range(n)
    ]


def test_local_job_runs_and_completes(repo: Path) -> None:
    loaded = _loaded(repo)
    done = BatchDone(_batch(3), loaded, "edge", "local", 0.0)
    got: list[BatchDone] = []
    run_and_complete(done, got.append)
    assert got == [done] and done.error is None
    assert done.outputs is not None and done.outputs["probabilities"].shape == (3, 4)
    assert done.compute_s > 0


def test_superseded_hedge_twin_never_computes(repo: Path) -> None:
    loaded = _loaded(repo)
    twin = BatchDone(_batch(2), loaded, "edge", "hedge-local", 0.0)
    twin.superseded = True  # the cloud answered while the twin waited for a worker
    run_and_complete(twin, None)
    assert twin.outputs is None and twin.compute_s == 0.0 and twin.error is None
