"""``cloud-gateway models pack`` / ``python -m models pack`` and ``models install``, run as a
user runs them, on models the project does not ship."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_gateway.cli import main as gateway_main
from models import signing
from models.bundle import MANIFEST, MODEL, VECTORS, pack_bundle, unpack_bundle
from models.manifest import Manifest, Postprocessing, Preprocessing
from models.repository import ModelRepository
from models.vectors import TestVectors
from tests.models.user_models import classifier, reducer

CHANNELS = "f1,f2,f3,f4,f5"


def pack_args(model: Path, out: Path, key: Path, *extra: str) -> list[str]:
    return [
        "models",
        "pack",
        str(model),
        "--name",
        "tiny",
        "--version",
        "1",
        "--out",
        str(out),
        "--key",
        str(key),
        *extra,
    ]


FULL = ("--channels", CHANNELS, "--sample-rate-hz", "10", "--labels", "ok,fault")


def run_pack(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = gateway_main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def manifest_of(bundle: Path) -> Manifest:
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(MANIFEST)
        assert member is not None
        return Manifest.model_validate_json(member.read())


def unservable_bundle(
    tmp: Path, key: Ed25519PrivateKey, *, dims: list[int | str], window: int, channels: int = 3
) -> Path:
    """A correctly signed bundle whose input no agent can feed, built bypassing pack."""
    src = Path(tempfile.mkdtemp(dir=tmp))
    reducer(src / MODEL, dims)
    session = ort.InferenceSession(str(src / MODEL))
    x = np.ones([2, *(d if isinstance(d, int) else 3 for d in dims[1:])], np.float32)
    (y,) = session.run(None, {"x": x})
    TestVectors(inputs={"x": x}, outputs={"score": y}).save(src / VECTORS)
    from models.bundle import graph_specs

    inputs, outputs = graph_specs(src / MODEL)
    manifest = Manifest(
        name="odd",
        version=1,
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(
            window=window,
            hop=window,
            channels=tuple(f"c{i}" for i in range(channels)),
            sample_rate_hz=10.0,
        ),
        postprocessing=Postprocessing(kind="anomaly", output="score", threshold=0.5),
    )
    (src / MANIFEST).write_text(manifest.model_dump_json())
    out = tmp / "odd-1.bundle"
    pack_bundle(src, out, key)
    return out


def test_pack_a_rank2_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    key = tmp_path / "keys" / "me.key"
    rc, out, err = run_pack(pack_args(model, tmp_path / "out", key, *FULL), capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == f"created signing key {key} (public key: {key.with_suffix('.pub')})"
    bundle = Path(lines[-1])
    assert bundle == tmp_path / "out" / "tiny-1.bundle" and bundle.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-1.bundle"]
    trusted = signing.load_trusted_keys(key.with_suffix(".pub"))
    manifest = unpack_bundle(bundle, tmp_path / "unpacked", trusted)  # runs the vectors too
    assert manifest.inputs[0].shape == (-1, 5)
    pre = manifest.preprocessing
    assert (pre.window, pre.hop, pre.channels, pre.sample_rate_hz) == (
        1,
        1,
        tuple(CHANNELS.split(",")),
        10.0,
    )
    assert manifest.postprocessing.labels == ("ok", "fault")
    assert manifest.postprocessing.output == "probabilities"
    # The vectors are ONNX Runtime's own outputs on seeded random inputs of the right shape.
    vectors = TestVectors.load(tmp_path / "unpacked" / VECTORS)
    x = vectors.inputs["x"]
    assert x.shape == (8, 5) and x.dtype == np.float32
    (want,) = ort.InferenceSession(str(model)).run(None, {"x": x})
    np.testing.assert_allclose(vectors.outputs["probabilities"], want, atol=1e-6)
    # A second pack with the existing key does not create one.
    rc, out, _ = run_pack(pack_args(model, tmp_path / "out2", key, *FULL), capsys)
    assert rc == 0 and "created signing key" not in out


def test_card_fields_and_flags_override_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = classifier(tmp_path / "m.onnx", features=12, classes=3)
    samples = np.random.default_rng(3).standard_normal((4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "samples.npy", samples)
    card = tmp_path / "card.toml"
    card.write_text(
        'name = "imu-net"\nversion = 3\ndescription = "from the card"\n'
        'channels = ["ax", "ay", "az"]\nwindow = 4\nhop = 2\nsample_rate_hz = 50\n'
        'labels = ["idle", "walk", "run"]\nslo_ms = 40\n'
        "normalize_mean = [0.0, 0.0, 9.8]\nnormalize_std = [1, 1, 2]\n"
        'sample_inputs = "samples.npy"\n'
    )
    key = tmp_path / "k.key"
    args = ["models", "pack", str(model), "--card", str(card), "--out", str(tmp_path / "o")]
    rc, out, err = run_pack([*args, "--key", str(key), "--version", "4", "--slo-ms", "25"], capsys)
    assert rc == 0, err
    # A flag's --threshold replaces the card's labels (the model becomes an anomaly scorer).
    rc, out2, err = run_pack(
        [
            *args[:-1],
            str(tmp_path / "o2"),
            "--key",
            str(key),
            "--threshold",
            "0.9",
            "--output",
            "probabilities",
        ],
        capsys,
    )
    assert rc == 0, err
    anomaly = manifest_of(Path(out2.strip().splitlines()[-1])).postprocessing
    assert (anomaly.kind, anomaly.threshold, anomaly.labels) == ("anomaly", 0.9, ())
    assert rc == 0, err
    manifest = manifest_of(Path(out.strip().splitlines()[-1]))
    assert (manifest.name, manifest.version, manifest.slo_ms) == ("imu-net", 4, 25.0)
    assert manifest.description == "from the card"
    pre = manifest.preprocessing
    assert (pre.window, pre.hop, pre.sample_rate_hz) == (4, 2, 50.0)
    assert pre.normalization is None, "baked into the graph, so every backend applies it"
    unpack_bundle(
        tmp_path / "o" / "imu-net-4.bundle",
        tmp_path / "u",
        signing.load_trusted_keys(key.with_suffix(".pub")),
    )
    # Windows from the .npy ([N, window, channels]) were flattened row-major for [N, 12].
    vectors = TestVectors.load(tmp_path / "u" / VECTORS)
    np.testing.assert_array_equal(vectors.inputs["x"], samples.reshape(4, 12))
    # The bundle's graph normalises per channel: raw readings in, the user's model on
    # (x - mean) / std out (for the flattened input, mean/std repeat per sample).
    normalized = (samples - np.array([0.0, 0.0, 9.8], np.float32)) / np.array(
        [1.0, 1.0, 2.0], np.float32
    )
    (want,) = ort.InferenceSession(str(model)).run(None, {"x": normalized.reshape(4, 12)})
    (got,) = ort.InferenceSession(str(tmp_path / "u" / MODEL)).run(
        None, {"x": samples.reshape(4, 12)}
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(vectors.outputs["probabilities"], want, atol=1e-6)


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        (
            "--sample-rate-hz",
            (),
            "error: invalid-input: sample_rate_hz (--sample-rate-hz): missing; expected a "
            "number > 0 (readings per second per sensor)",
        ),
        (
            "--channels",
            (),
            "error: invalid-input: channels (--channels): missing; expected channel names in "
            "input order, e.g. a,b,c",
        ),
        (
            "--labels",
            (),
            "error: invalid-input: labels (--labels): expected exactly one of --labels "
            "(classifier) or --threshold (anomaly); neither was given",
        ),
        (
            None,
            ("--window", "0"),
            "error: invalid-input: window (--window): expected an integer >= 1 (samples per "
            "window), got 0",
        ),
        (
            None,
            ("--normalize-mean", "0,0"),
            "error: invalid-input: normalize_std (--normalize-std): missing; normalisation "
            "needs both mean and std",
        ),
        (
            None,
            ("--output", "logits"),
            "error: invalid-input: output (--output): expected one of ['probabilities'], "
            "got 'logits'",
        ),
    ],
)
def test_a_wrong_or_missing_field_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    drop: str | None,
    extra: tuple[str, ...],
    message: str,
) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    full = list(FULL)
    if drop is not None:
        i = full.index(drop)
        del full[i : i + 2]
    out_dir = tmp_path / "out"
    key = tmp_path / "keys" / "k.key"
    rc, out, err = run_pack(pack_args(model, out_dir, key, *full, *extra), capsys)
    assert rc == 1 and out == ""
    assert err == message + "\n"
    assert not out_dir.exists() and not key.exists(), "a refused pack leaves nothing behind"


def test_unknown_card_field_and_wrong_labels_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    card = tmp_path / "card.toml"
    card.write_text('name = "tiny"\nversion = 1\nwindwo = 1\n')
    args = ["models", "pack", str(model), "--card", str(card), "--out", str(tmp_path / "o")]
    rc, _, err = run_pack(args, capsys)
    assert rc == 1 and err.startswith("error: invalid-input: windwo: unknown model card field")
    full = ("--channels", CHANNELS, "--sample-rate-hz", "10", "--labels", "a,b,c")
    rc, _, err = run_pack(pack_args(model, tmp_path / "o", tmp_path / "k.key", *full), capsys)
    assert rc == 1
    assert err == (
        "error: invalid-input: labels (--labels): expected 2 labels (output 'probabilities' "
        "is [-1, 2]), got 3\n"
    )


def test_pack_refuses_what_no_agent_can_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    common = ("--sample-rate-hz", "10", "--threshold", "0.5", "--channels", "a,b,c")
    rank4 = reducer(tmp_path / "r4.onnx", ["N", 2, 3, 4])
    rc, _, err = run_pack(pack_args(rank4, out_dir, tmp_path / "k.key", *common), capsys)
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: unservable-model: tiny:1 input 'x' has shape [N, 2, 3, 4]")
    assert "accepted: [N, window, channels]; [N, channels] (window 1); [N, window*ch" in err
    rc, _, err = run_pack(
        pack_args(rank4, out_dir, tmp_path / "k.key", *common, "--window", "2"), capsys
    )
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: unservable-model: tiny:1 input 'x' has shape [N, 2, 3, 4]")
    rank3 = reducer(tmp_path / "r3.onnx", ["N", 10, 3])
    rc, _, err = run_pack(
        pack_args(rank3, out_dir, tmp_path / "k.key", *common, "--window", "20"), capsys
    )
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: unservable-model: tiny:1 input 'x' has shape [N, 10, 3]")
    assert "with window 20 and 3 channels; accepted: [N, 20, 3]" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]


def test_python_m_models_pack_and_no_prefix_flags(tmp_path: Path) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = pack_args(model, tmp_path / "out", tmp_path / "k.key", *FULL)[1:]
    done = subprocess.run(
        [sys.executable, "-m", "models", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("tiny-1.bundle")
    abbreviated = [a.replace("--sample-rate-hz", "--sample-rate") for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "models", *abbreviated], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and "unrecognized arguments: --sample-rate" in done.stderr


def test_install_seeds_an_agent_repository_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dev_key: Ed25519PrivateKey
) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    key = tmp_path / "k.key"
    rc, out, err = run_pack(pack_args(model, tmp_path / "out", key, *FULL), capsys)
    assert rc == 0, err
    repo_dir = tmp_path / "repo"
    install = ["models", "install", out.strip().splitlines()[-1], "--repository", str(repo_dir)]
    rc, out, err = run_pack([*install, "--trusted-keys", str(key.with_suffix(".pub"))], capsys)
    assert rc == 0, err
    assert out.strip() == f"installed tiny:1 into {repo_dir} (active version: 1)"
    repo = ModelRepository(
        repo_dir, trusted_keys=signing.load_trusted_keys(key.with_suffix(".pub"))
    )
    assert repo.models() == ["tiny"] and repo.active("tiny") == 1 and not repo.problems
    # An untrusted signer is refused and nothing is installed.
    other = signing.generate_key(tmp_path / "other" / "o.key")
    rc, _, err = run_pack(
        [*install[:3], "--repository", str(tmp_path / "r2"), "--trusted-keys", str(other)], capsys
    )
    assert rc == 1 and "unknown-signer" in err
    assert ModelRepository(tmp_path / "r2").models() == []
    # A bundle no agent can serve (built bypassing pack) is refused before it is written.
    odd = unservable_bundle(tmp_path, dev_key, dims=["N", 2, 3, 4], window=2)
    trusted_dir = tmp_path / "trusted"
    trusted_dir.mkdir()
    pub = dev_key.public_key()
    from cryptography.hazmat.primitives import serialization

    (trusted_dir / "dev.pub").write_bytes(
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rc, _, err = run_pack(
        [
            "models",
            "install",
            str(odd),
            "--repository",
            str(repo_dir),
            "--trusted-keys",
            str(trusted_dir),
        ],
        capsys,
    )
    assert rc == 1 and err.startswith(
        "error: unservable-model: odd:1 input 'x' has shape [N, 2, 3, 4]"
    )
    assert "odd" not in ModelRepository(repo_dir).models()
    assert json.loads((repo_dir / "tiny" / "state.json").read_text())["stack"] == [1]


def test_a_model_that_does_not_run_leaves_no_bundle_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.models.user_models import broken

    model = broken(tmp_path / "broken.onnx")
    key = tmp_path / "keys" / "k.key"
    full = ("--channels", CHANNELS, "--sample-rate-hz", "10", "--threshold", "1")
    rc, out, err = run_pack(pack_args(model, tmp_path / "out", key, *full), capsys)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: invalid-input: MODEL: does not run on the sample inputs:")
    assert not (tmp_path / "out").exists() and not key.exists()


def test_a_file_that_is_not_onnx_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x00not a model\nat all\n")
    rc, out, err = run_pack(pack_args(model, tmp_path / "out", tmp_path / "k.key", *FULL), capsys)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: invalid-input: MODEL: {model} is not a readable ONNX model")
    rc, _, err = run_pack(
        pack_args(tmp_path / "nope.onnx", tmp_path / "out", tmp_path / "k.key", *FULL), capsys
    )
    assert rc == 1
    missing = tmp_path / "nope.onnx"
    assert err == f"error: invalid-input: MODEL: {missing} does not exist; expected an ONNX file\n"
    assert not (tmp_path / "k.key").exists()


@pytest.mark.parametrize(("dims", "window"), [(["N", 4, 3], 4), (["N", 3], 1), (["N", 12], 4)])
def test_baked_normalization_is_per_channel_in_every_servable_form(
    tmp_path: Path, dims: list[int | str], window: int
) -> None:
    import onnx

    from models.manifest import Normalization
    from models.pack import bake_normalization

    path = reducer(tmp_path / "m.onnx", dims)
    norm = Normalization(mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    shape = tuple(-1 if isinstance(d, str) else d for d in dims)
    baked = bake_normalization(onnx.load(str(path)), norm, shape, window)
    onnx.checker.check_model(baked)
    windows = np.random.default_rng(4).standard_normal((5, window, 3)).astype(np.float32)
    normalized = (windows - np.float32([1, 2, 3])) / np.float32([2, 4, 8])
    feed = windows.reshape(5, 4, 3) if len(shape) == 3 else windows.reshape(5, -1)
    want_in = normalized.reshape(feed.shape)
    (got,) = ort.InferenceSession(baked.SerializeToString()).run(None, {"x": feed})
    (want,) = ort.InferenceSession(str(path)).run(None, {"x": want_in})
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_unwritable_out_and_key_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, out, err = run_pack(pack_args(model, blocker / "out", tmp_path / "k.key", *FULL), capsys)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: invalid-input: out (--out): cannot write {blocker / 'out'}")
    rc, _, err = run_pack(pack_args(model, tmp_path / "out", blocker / "k.key", *FULL), capsys)
    assert rc == 1 and err.startswith("error: invalid-input: key (--key): cannot create")
    assert not (tmp_path / "k.key").exists()
