"""What an edge agent can serve: the one rule, checked by pack, the gateway and the agent.

An agent turns a stream of readings into windows of shape ``(window, channels)`` and feeds a
batch of them to the model's single FP32 input. Three input shapes can take such a batch
(``N`` is the dynamic batch axis, -1 in the manifest):

* rank 3 ``[N, window, channels]``: the windows as they are;
* rank 2 ``[N, channels]``, only when the window is 1: one feature vector per reading;
* rank 2 ``[N, window * channels]``: flattened windows, row-major (all channels of the
  first sample, then the second sample, ...).

Any other shape (rank 4, a fixed batch axis, dims that disagree with the manifest's window
and channels, several inputs) no agent could feed. :func:`check_servable` raises
:class:`UnservableModel` naming the model's shape and the accepted forms, and
:func:`to_model_input` reshapes a batch of windows for the accepted forms.
"""

from __future__ import annotations

import numpy as np

from models.errors import UnservableModel
from models.manifest import Manifest, Preprocessing, TensorSpec

#: The accepted forms when the window is not known yet.
GENERIC_FORMS = "[N, window, channels]; [N, channels] (window 1); [N, window*channels] (row-major)"


def shown_shape(shape: tuple[int, ...]) -> str:
    """``(-1, 10, 3)`` -> ``[N, 10, 3]`` (-1 elsewhere stays -1: a dynamic axis)."""
    return "[" + ", ".join("N" if d == -1 and i == 0 else str(d) for i, d in enumerate(shape)) + "]"


def rank_problem(spec: TensorSpec, ref: str = "model") -> str | None:
    """Why no window/channels could make this input servable (rank or batch axis)."""
    if len(spec.shape) in (2, 3) and spec.shape[0] == -1:
        return None
    return (
        f"{ref} input {spec.name!r} has shape {shown_shape(tuple(spec.shape))}, which no edge "
        f"agent can serve; accepted: {GENERIC_FORMS}; N must be dynamic (-1)"
    )


def accepted_forms(pre: Preprocessing) -> str:
    """The accepted input shapes for this window/channels, for error messages."""
    w, c = pre.window, len(pre.channels)
    forms = [f"[N, {w}, {c}] (N, window, channels)"]
    if w == 1:
        forms.append(f"[N, {c}] (N, channels; window 1)")
    forms.append(f"[N, {w * c}] (N, window*channels, row-major)")
    return "; ".join(forms)


def _fits(shape: tuple[int, ...], pre: Preprocessing) -> bool:
    w, c = pre.window, len(pre.channels)
    if not shape or shape[0] != -1:
        return False  # the agent batches any number of windows: N must be dynamic
    dims = shape[1:]
    if len(dims) == 2:
        return dims[0] in (-1, w) and dims[1] in (-1, c)
    if len(dims) == 1:
        return dims[0] == w * c or (w == 1 and dims[0] in (-1, c))
    return False


def servable_problem(
    inputs: tuple[TensorSpec, ...], pre: Preprocessing, ref: str = "model"
) -> str | None:
    """Why no agent could serve these inputs with this preprocessing (None: it can)."""
    if len(inputs) != 1:
        names = [s.name for s in inputs]
        return (
            f"{ref} has {len(inputs)} inputs {names}; an edge agent feeds exactly one FP32 input "
            f"shaped {accepted_forms(pre)}"
        )
    spec = inputs[0]
    shape = tuple(spec.shape)
    if spec.dtype != "FP32":
        return (
            f"{ref} input {spec.name!r} is {spec.dtype}; an edge agent feeds FP32 windows "
            f"shaped {accepted_forms(pre)}"
        )
    if _fits(shape, pre):
        return None
    return (
        f"{ref} input {spec.name!r} has shape {shown_shape(shape)} ({list(shape)}), which no "
        "edge agent "
        f"can serve with window {pre.window} and {len(pre.channels)} channels; accepted: "
        f"{accepted_forms(pre)}; N must be dynamic (-1)"
    )


def check_servable(manifest: Manifest) -> None:
    """Raise :class:`UnservableModel` unless an edge agent can feed this model."""
    problem = servable_problem(manifest.inputs, manifest.preprocessing, manifest.ref)
    if problem is not None:
        raise UnservableModel(problem)


def to_model_input(windows: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """A ``(batch, window, channels)`` array as the model's input wants it.

    Rank 3 inputs take it unchanged; rank 2 inputs take each window flattened row-major
    (for window 1 that is the one reading's channel vector). ``input_shape`` is the
    manifest's, already checked by :func:`check_servable`. Never copies for rank 3, and
    ``reshape`` of a C-contiguous stack is a view, so the rank-2 path costs nothing either.
    """
    if len(input_shape) == 3:
        return windows
    return windows.reshape(windows.shape[0], -1)
