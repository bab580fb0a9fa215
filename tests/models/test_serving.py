"""models.serving: one warm-up feed, one way to load, leases that outlive a swap."""

from __future__ import annotations

import numpy as np
import pytest

from models import serving
from models.backends.base import BackendOptions
from models.errors import BackendError
from models.manifest import TensorSpec
from models.recipes import BuildResult
from models.repository import ModelRepository


def test_zero_feed_keeps_a_fixed_first_axis() -> None:
    specs = (
        TensorSpec(name="x", dtype="FP32", shape=(-1, 100, -1)),
        TensorSpec(name="k", dtype="INT64", shape=(3, 2)),
    )
    feed = serving.zero_feed(specs, 8)
    assert feed["x"].shape == (8, 100, 1) and feed["x"].dtype == np.float32
    assert feed["k"].shape == (3, 2) and feed["k"].dtype == np.int64  # cannot batch: as is
    assert not feed["x"].any()


def test_load_warms_times_and_leases_outlive_retire(built: BuildResult) -> None:
    repo = ModelRepository(built.repository, check=False)
    manifest = repo.manifest("motion-edge")
    served = serving.load(
        repo.model_path("motion-edge"),
        "onnxruntime",
        BackendOptions(),
        manifest=manifest,
        warm_sizes=(1, 8),
    )
    assert set(served.warm_times) == {1, 8} and all(t > 0 for t in served.warm_times.values())
    served.acquire()  # a batch is running on it
    served.retire()  # a swap took it out of service
    x = serving.zero_feed(served.backend.inputs, 2)
    assert served.backend.infer(x)[manifest.postprocessing.output].shape[0] == 2  # still works
    served.release()  # the last lease: now it closes
    with pytest.raises(Exception):  # noqa: B017 - the engine's own error once closed
        served.backend.infer(x)


def test_a_failing_check_closes_the_backend_and_says_why(built: BuildResult) -> None:
    repo = ModelRepository(built.repository, check=False)

    def refuse(backend: object) -> None:
        raise BackendError("not for this agent")

    with pytest.raises(BackendError, match="not for this agent"):
        serving.load(repo.model_path("motion-edge"), "onnxruntime", BackendOptions(), check=refuse)
    with pytest.raises(BackendError, match="cannot load"):
        serving.load(built.repository / "nope.onnx", "onnxruntime", BackendOptions())
