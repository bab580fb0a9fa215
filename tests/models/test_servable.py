"""The one rule of what an edge agent can serve (models.servable), and the agent applying it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.errors import UnservableModel
from models.manifest import Preprocessing, TensorSpec
from models.servable import accepted_forms, servable_problem, to_model_input


def _pre(window: int, channels: int) -> Preprocessing:
    return Preprocessing(
        window=window,
        hop=window,
        channels=tuple(f"c{i}" for i in range(channels)),
        sample_rate_hz=10.0,
    )


def _spec(*shape: int, dtype: str = "FP32") -> tuple[TensorSpec, ...]:
    return (TensorSpec(name="x", dtype=dtype, shape=shape),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "window", "channels"),
    [
        ((-1, 100, 6), 100, 6),  # rank 3 as the built-ins
        ((-1, -1, 6), 100, 6),  # dynamic window axis
        ((-1, 1, 5), 1, 5),
        ((-1, 5), 1, 5),  # one feature vector per reading
        ((-1, -1), 1, 5),
        ((-1, 12), 4, 3),  # flattened windows
    ],
)
def test_accepted_shapes(shape: tuple[int, ...], window: int, channels: int) -> None:
    assert servable_problem(_spec(*shape), _pre(window, channels)) is None


@pytest.mark.parametrize(
    ("shape", "window", "channels"),
    [
        ((-1, 2, 3, 4), 2, 3),  # rank 4
        ((-1, 10, 3), 20, 3),  # rank 3, window disagrees
        ((-1, 20, 4), 20, 3),  # rank 3, channels disagree
        ((-1, 5), 2, 5),  # [N, channels] needs window 1
        ((-1, 11), 4, 3),  # not window*channels
        ((-1, -1), 4, 3),  # a dynamic flat axis cannot be checked against window*channels
        ((1, 5), 1, 5),  # fixed batch axis: the agent batches any number
        ((-1,), 1, 1),  # rank 1
    ],
)
def test_refused_shapes_name_the_shape_and_the_accepted_forms(
    shape: tuple[int, ...], window: int, channels: int
) -> None:
    problem = servable_problem(_spec(*shape), _pre(window, channels), "user:1")
    assert problem is not None
    assert "user:1" in problem and str(list(shape)) in problem
    assert accepted_forms(_pre(window, channels)) in problem
    assert f"[N, {window}, {channels}]" in problem and f"[N, {window * channels}]" in problem


def test_refuses_several_inputs_and_non_float_inputs() -> None:
    two = (*_spec(-1, 5), TensorSpec(name="y", dtype="FP32", shape=(-1, 5)))
    assert "2 inputs" in (servable_problem(two, _pre(1, 5)) or "")
    assert "INT64" in (servable_problem(_spec(-1, 5, dtype="INT64"), _pre(1, 5)) or "")


def test_to_model_input_flattens_row_major() -> None:
    windows = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    assert to_model_input(windows, (-1, 4, 3)) is windows
    flat = to_model_input(windows, (-1, 12))
    assert flat.shape == (2, 12)
    # sample 0's channels, then sample 1's, ...
    assert flat[1].tolist() == [float(v) for v in range(12, 24)]
    one = np.arange(10, dtype=np.float32).reshape(2, 1, 5)
    assert to_model_input(one, (-1, 5)).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_the_agent_refuses_an_unservable_version_with_the_same_message(
    tmp_path: Path, dev_key: object, trusted: dict
) -> None:
    """A bundle built bypassing pack (rank 3 whose window disagrees) reaches an agent's
    repository through a path without the check: loading it names shape and forms."""
    from edge_agent.model.slot import ModelSlot
    from models.repository import ModelRepository
    from tests.models.test_pack import unservable_bundle

    bundle = unservable_bundle(tmp_path, dev_key, dims=["N", 10, 3], window=20)
    ModelRepository(tmp_path / "repo", trusted_keys=trusted).install(bundle)

    async def load() -> None:
        with ThreadPoolExecutor(1) as pool:
            slot = ModelSlot(tmp_path / "repo", pool, warmup_batches=(1,))
            await slot.load("odd", 1)

    with pytest.raises(UnservableModel) as err:
        asyncio.run(load())
    assert "[N, 10, 3]" in err.value.message and "[N, 20, 3]" in err.value.message
