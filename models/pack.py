"""Pack a user's ONNX model into one signed bundle: ``cloud-gateway models pack``.

The fields of the manifest come from a TOML model card and/or command-line flags (flags
win). Everything is validated before anything is written: a wrong or missing field is one
line naming the field and what was expected, and a model no edge agent could serve is
refused with the rule of :mod:`models.servable`. The test vectors are the model's own
outputs on ONNX Runtime CPU for the sample inputs (default: seeded random inputs of the
input's shape). The bundle is built in a temporary directory and moved into ``out`` with
one ``rename(2)``, so a failure never leaves a half-written file there.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models import signing
from models.bundle import MANIFEST, MODEL, VECTORS, bundle_filename, graph_specs, pack_bundle
from models.errors import EdgecloudError, InvalidInput, UnservableModel
from models.manifest import (
    Manifest,
    Metrics,
    Normalization,
    Postprocessing,
    Preprocessing,
    TensorSpec,
    validate_model_name,
)
from models.servable import check_servable, rank_problem, servable_problem, to_model_input
from models.vectors import TestVectors

#: What each card field must be, for the one-line errors (field -> expectation).
EXPECTED: dict[str, str] = {
    "name": "a model name of [a-z0-9._-], at most 64 characters, starting with [a-z0-9]",
    "version": "an integer >= 1",
    "description": "a string",
    "window": "an integer >= 1 (samples per window)",
    "hop": "an integer >= 1 (samples between window starts; default: the window)",
    "channels": "channel names in input order, e.g. a,b,c",
    "sample_rate_hz": "a number > 0 (readings per second per sensor)",
    "normalize_mean": "one number per channel, e.g. 0,0,0",
    "normalize_std": "one number > 0 per channel, e.g. 1,1,1",
    "labels": "class labels in output order, e.g. ok,fault (classifier)",
    "threshold": "a number: the anomaly score alert threshold",
    "output": "the name of the output tensor holding the scores",
    "slo_ms": "a number > 0 (latency SLO in milliseconds)",
    "max_batch_size": "an integer >= 1",
    "sample_inputs": "a .npy file of test-vector inputs",
}
_LISTS = ("channels", "labels", "normalize_mean", "normalize_std")
DEFAULT_SAMPLES = 8


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


class ModelCard(BaseModel):
    """The fields a user gives about a model (TOML card keys = flag names with ``_``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    description: str = ""
    window: int | None = Field(default=None, ge=1)
    hop: int | None = Field(default=None, ge=1)
    channels: tuple[str, ...] = Field(min_length=1)
    sample_rate_hz: float = Field(gt=0)
    normalize_mean: tuple[float, ...] | None = None
    normalize_std: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    threshold: float | None = None
    output: str | None = None
    slo_ms: float = Field(default=100.0, gt=0)
    max_batch_size: int = Field(default=256, ge=1)
    sample_inputs: Path | None = None

    @field_validator(*_LISTS, mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        """Flags give ``a,b,c``; cards may give a TOML array or the same string."""
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_model_name(v)

    @field_validator("channels", "labels")
    @classmethod
    def _unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (len(set(v)) != len(v) or not all(v)):
            raise ValueError("names must be unique and non-empty")
        return v


def _field_error(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field} ({flag_of(field)}): {problem}")


def _validation_message(exc: ValidationError, data: dict[str, Any]) -> InvalidInput:
    errors = exc.errors()
    # A misspelt key is the likeliest cause of a "missing" one: report it first.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    field = str(err["loc"][0]) if err["loc"] else "card"
    if err["type"] == "extra_forbidden":
        return InvalidInput(
            f"{field}: unknown model card field; expected one of {', '.join(EXPECTED)}"
        )
    if err["type"] == "missing":
        return _field_error(field, f"missing; expected {EXPECTED.get(field, 'a value')}")
    got = data.get(field)
    return _field_error(field, f"expected {EXPECTED.get(field, 'a valid value')}, got {got!r}")


def load_card(path: Path | str) -> dict[str, Any]:
    """The raw fields of a TOML model card (relative paths resolved against the card)."""
    card = Path(path)
    try:
        data = tomllib.loads(card.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"card (--card): {card} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"card (--card): cannot read {card}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"card (--card): {card} is not valid TOML: {exc}") from None
    sample = data.get("sample_inputs")
    if isinstance(sample, str) and not Path(sample).is_absolute():
        data["sample_inputs"] = str(card.parent / sample)
    return data


def read_card(card: Path | str | None, overrides: dict[str, Any]) -> ModelCard:
    """Card fields, then the flags actually given (``None`` = not given) on top."""
    data = load_card(card) if card is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    # --labels and --threshold choose the model's kind: a flag replaces the card's choice.
    if "labels" in given:
        data.pop("threshold", None)
    if "threshold" in given:
        data.pop("labels", None)
    data.update(given)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise _validation_message(exc, data) from None


@dataclass(frozen=True)
class Packed:
    """What :func:`pack_model` wrote."""

    path: Path
    manifest: Manifest
    key: Path
    public_key: Path
    key_created: bool


def _model_specs(model: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if not model.is_file():
        raise InvalidInput(f"MODEL: {model} does not exist; expected an ONNX file")
    try:
        return graph_specs(model)
    except EdgecloudError as exc:
        raise InvalidInput(
            f"MODEL: {model} is not a readable ONNX model: {_one_line(exc.message)}"
        ) from None
    except Exception as exc:  # onnx raises its own untyped errors: map them once here
        raise InvalidInput(
            f"MODEL: {model} is not a readable ONNX model: {_one_line(exc)}"
        ) from None


def _infer_window(card: ModelCard, spec: TensorSpec) -> int:
    """The card's window, else the one the input shape implies (fixed dims only)."""
    if card.window is not None:
        return card.window
    dims, c = spec.shape[1:], len(card.channels)
    if len(dims) == 2 and dims[0] > 0:
        return dims[0]
    if len(dims) == 1 and dims[0] > 0 and dims[0] % c == 0:
        return dims[0] // c
    raise _field_error(
        "window",
        f"missing; the input shape {list(spec.shape)} does not fix it, "
        f"expected {EXPECTED['window']}",
    )


def _preprocessing(card: ModelCard, window: int) -> tuple[Preprocessing, Normalization | None]:
    """The manifest's preprocessing, and the normalisation to bake into the graph (the
    manifest then says ``normalization: null``: the graph normalises internally, so every
    backend, the agent's and the cloud tier's, applies it the same way)."""
    c = len(card.channels)
    normalization = None
    if (card.normalize_mean is None) != (card.normalize_std is None):
        missing = "normalize_std" if card.normalize_std is None else "normalize_mean"
        raise _field_error(missing, "missing; normalisation needs both mean and std")
    if card.normalize_mean is not None and card.normalize_std is not None:
        for field, values in (
            ("normalize_mean", card.normalize_mean),
            ("normalize_std", card.normalize_std),
        ):
            if len(values) != c:
                raise _field_error(
                    field, f"expected {c} numbers (one per channel), got {len(values)}"
                )
        if any(s <= 0 for s in card.normalize_std):
            raise _field_error("normalize_std", f"expected {EXPECTED['normalize_std']}")
        normalization = Normalization(mean=card.normalize_mean, std=card.normalize_std)
    pre = Preprocessing(
        window=window,
        hop=card.hop or window,
        channels=card.channels,
        sample_rate_hz=card.sample_rate_hz,
    )
    return pre, normalization


def bake_normalization(
    model: onnx.ModelProto, norm: Normalization, input_shape: tuple[int, ...], window: int
) -> onnx.ModelProto:
    """Prepend ``(x - mean) / std`` to the graph, per channel, under the same input name.

    For a flattened ``[N, window*channels]`` input the per-channel values repeat once per
    sample (row-major: channels vary fastest).
    """
    graph = model.graph
    name = graph.input[0].name
    raw_mean = np.asarray(norm.mean, dtype=np.float32)
    raw_std = np.asarray(norm.std, dtype=np.float32)
    flat = len(input_shape) == 2 and window > 1
    mean = np.tile(raw_mean, window) if flat else raw_mean
    std = np.tile(raw_std, window) if flat else raw_std
    normalized = f"{name}__normalized"
    for node in graph.node:
        for i, used in enumerate(node.input):
            if used == name:
                node.input[i] = normalized
    graph.initializer.extend(
        [
            numpy_helper.from_array(mean, f"{name}__mean"),
            numpy_helper.from_array(std, f"{name}__std"),
        ]
    )
    nodes = [
        helper.make_node("Sub", [name, f"{name}__mean"], [f"{name}__centered"]),
        helper.make_node("Div", [f"{name}__centered", f"{name}__std"], [normalized]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return model


def _postprocessing(card: ModelCard, outputs: tuple[TensorSpec, ...]) -> Postprocessing:
    names = [o.name for o in outputs]
    if card.output is None:
        if len(outputs) != 1:
            raise _field_error("output", f"missing; the model has outputs {names}, name one")
        output = outputs[0]
    else:
        match = [o for o in outputs if o.name == card.output]
        if not match:
            raise _field_error("output", f"expected one of {names}, got {card.output!r}")
        output = match[0]
    if (card.labels is None) == (card.threshold is None):
        which = "both were given" if card.labels is not None else "neither was given"
        raise _field_error(
            "labels",
            f"expected exactly one of --labels (classifier) or --threshold (anomaly); {which}",
        )
    if card.labels is not None:
        width = output.shape[-1] if len(output.shape) > 1 else -1
        if width > 0 and width != len(card.labels):
            raise _field_error(
                "labels",
                f"expected {width} labels (output {output.name!r} is {list(output.shape)}), "
                f"got {len(card.labels)}",
            )
        return Postprocessing(kind="classifier", output=output.name, labels=card.labels)
    return Postprocessing(kind="anomaly", output=output.name, threshold=card.threshold)


def _sample_inputs(card: ModelCard, spec: TensorSpec, pre: Preprocessing) -> np.ndarray:
    concrete = (pre.window, len(pre.channels))
    if card.sample_inputs is None:
        rng = np.random.default_rng(0)
        windows = rng.standard_normal((DEFAULT_SAMPLES, *concrete)).astype(np.float32)
        return np.ascontiguousarray(to_model_input(windows, spec.shape))
    try:
        arr = np.load(card.sample_inputs, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _field_error(
            "sample_inputs", f"expected {EXPECTED['sample_inputs']}: {exc}"
        ) from None
    if arr.ndim == 3 and arr.shape[1:] == concrete:
        arr = to_model_input(arr, spec.shape)  # windows as the agent sees them
    if arr.ndim == 0 or len(arr) == 0 or not spec.accepts((arr.shape[0], *arr.shape[1:])):
        raise _field_error(
            "sample_inputs",
            f"expected an array shaped {list(spec.shape)} or [N, {pre.window}, "
            f"{len(pre.channels)}] with N >= 1, got {list(arr.shape)}",
        )
    if not np.can_cast(arr.dtype, np.float32, casting="same_kind"):
        raise _field_error("sample_inputs", f"expected numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr.astype(np.float32))


def prepare(
    model: Path | str, card: ModelCard
) -> tuple[Manifest, np.ndarray, Normalization | None]:
    """Validate everything: the unsigned manifest, the sample inputs and the normalisation
    to bake into the graph."""
    model = Path(model)
    inputs, outputs = _model_specs(model)
    if len(inputs) != 1:
        raise InvalidInput(
            f"MODEL: has {len(inputs)} inputs {[s.name for s in inputs]}; an edge agent feeds "
            "exactly one FP32 input"
        )
    problem = rank_problem(inputs[0], f"{card.name}:{card.version}")
    if problem is not None:
        raise UnservableModel(problem)
    window = _infer_window(card, inputs[0])
    pre, normalization = _preprocessing(card, window)
    problem = servable_problem(inputs, pre, f"{card.name}:{card.version}")
    if problem is not None:  # the same rule and message as the gateway's and the agent's
        raise UnservableModel(problem)
    post = _postprocessing(card, outputs)
    manifest = Manifest(
        name=card.name,
        version=card.version,
        description=card.description,
        inputs=inputs,
        outputs=outputs,
        preprocessing=pre,
        postprocessing=post,
        slo_ms=card.slo_ms,
        max_batch_size=card.max_batch_size,
    )
    check_servable(manifest)
    return manifest, _sample_inputs(card, inputs[0], pre), normalization


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _vectors(model: Path, manifest: Manifest, x: np.ndarray) -> TestVectors:
    """The model's own outputs on ONNX Runtime CPU: the reference every backend must match.

    A session of its own with ORT's logger silenced: a model that fails here is reported
    once, as one line, not also as ORT's multi-line log on stderr.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    run = ort.RunOptions()
    run.log_severity_level = 4
    name = manifest.inputs[0].name
    try:
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        results = session.run(None, {name: x}, run)
    except Exception as exc:  # ORT raises its own untyped errors: map them once here
        raise InvalidInput(f"MODEL: does not run on the sample inputs: {_one_line(exc)}") from None
    names = [o.name for o in session.get_outputs()]
    return TestVectors(inputs={name: x}, outputs=dict(zip(names, results, strict=True)))


def pack_model(
    model: Path | str,
    out_dir: Path | str,
    key: Path | str,
    *,
    card: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    measure: bool = True,
) -> Packed:
    """Validate, compute test vectors, sign, and move ``<out>/<name>-<version>.bundle`` in."""
    from models.recipes.build import measure_latency

    model = Path(model)
    fields = read_card(card, overrides or {})
    manifest, x, normalization = prepare(model, fields)
    key_path = Path(key)
    out = Path(out_dir)
    final = out / bundle_filename(manifest)
    with tempfile.TemporaryDirectory(prefix=f"edgecloud-pack-{manifest.name}-") as tmp:
        src = Path(tmp)
        if normalization is None:
            (src / MODEL).write_bytes(model.read_bytes())
        else:
            graph = onnx.load(str(model))
            shape = manifest.inputs[0].shape
            window = manifest.preprocessing.window
            onnx.save(bake_normalization(graph, normalization, shape, window), str(src / MODEL))
        _vectors(src / MODEL, manifest, x).save(src / VECTORS)
        # Only now that the model is known to run: a refused pack creates no key either.
        try:  # before the key: a pack that cannot write its bundle creates nothing
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"out (--out): cannot write {final}: {exc.strerror}") from None
        key_created = not key_path.exists()
        try:
            private = signing.ensure_key(key_path)
        except OSError as exc:
            raise InvalidInput(f"key (--key): cannot create {key_path}: {exc.strerror}") from None
        if measure:
            shape = tuple(x.shape[1:])
            metrics = Metrics(
                latency=measure_latency(src / MODEL, shape),
                machine=f"{platform.machine()} {os.cpu_count()} cpus",
            )
            manifest = manifest.model_copy(update={"metrics": metrics})
        (src / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        built = src / "out" / final.name
        manifest = pack_bundle(src, built, private)
        part = out / f".{final.name}.part-{os.getpid()}"
        try:
            # Copy next to the target, then one rename: readers see all or nothing.
            part.write_bytes(built.read_bytes())
            os.replace(part, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise InvalidInput(f"out (--out): cannot write {final}: {exc.strerror}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    return Packed(
        path=final,
        manifest=manifest,
        key=key_path,
        public_key=signing.public_key_path(key_path),
        key_created=key_created,
    )
