"""Good and deliberately bad model bundles for gateway and updater tests.

Good bundles come from ``models.recipes``; each bad one breaks exactly one check so the
test can insist on the specific error (reason) the verifier must give.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import signing
from models.bundle import pack_bundle
from models.recipes.build import build_model
from models.vectors import TestVectors

MODEL = "motion-edge"

#: bad bundle name -> the error reason the verifier must report
BAD_REASONS: dict[str, str] = {
    "corrupt": "corrupt-bundle",
    "wrong-hash": "hash-mismatch",
    "bad-signature": "bad-signature",
    "unknown-signer": "unknown-signer",
    "wrong-input-shape": "spec-mismatch",
    "failing-vectors": "test-vector-mismatch",
}


@dataclass
class BundleSet:
    root: Path
    key: Path
    trusted_dir: Path
    good: dict[int, Path] = field(default_factory=dict)  # version -> bundle
    bad: dict[str, Path] = field(default_factory=dict)  # kind -> bundle (version 9)


def _extract(bundle: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar:
            data = tar.extractfile(member)
            assert data is not None
            (dest / member.name).write_bytes(data.read())
    return dest


def _tar(src: Path, out: Path) -> Path:
    """Pack a directory without re-hashing or re-signing (to keep a tampered state)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.iterdir()):
            info = tarfile.TarInfo(path.name)
            data = path.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())
    return out


def _set_version(src: Path, version: int) -> None:
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["version"] = version
    (src / "manifest.json").write_text(json.dumps(manifest))


def build_set(root: Path) -> BundleSet:
    """v1, v2 normal; v3 returns NaN; v4 is slow; bad bundles are all version 9."""
    key = root / "keys" / "dev.key"
    signing.ensure_key(key)
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "dev.pub").write_bytes(signing.public_key_path(key).read_bytes())
    out = BundleSet(root, key, trusted)
    for version, variant in ((1, "normal"), (2, "normal"), (3, "nan"), (4, "slow")):
        out.good[version] = build_model(MODEL, version, root / "good", key, variant=variant)
    bad = root / "bad"
    bad.mkdir()
    base = out.good[2]
    private = signing.load_private_key(key)

    data = base.read_bytes()
    out.bad["corrupt"] = bad / "corrupt.bundle"
    out.bad["corrupt"].write_bytes(data[: len(data) // 2])

    src = _extract(base, root / "w-hash")
    _set_version(src, 9)
    pack_bundle(src, bad / "tmp.bundle", private)
    src = _extract(bad / "tmp.bundle", root / "w-hash2")
    onnx_bytes = (src / "model.onnx").read_bytes()
    (src / "model.onnx").write_bytes(onnx_bytes[:-1] + bytes([onnx_bytes[-1] ^ 1]))
    out.bad["wrong-hash"] = _tar(src, bad / "wrong-hash.bundle")

    src = _extract(bad / "tmp.bundle", root / "w-sig")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["description"] = manifest.get("description", "") + " (tampered)"
    (src / "manifest.json").write_text(json.dumps(manifest))
    out.bad["bad-signature"] = _tar(src, bad / "bad-signature.bundle")

    other = root / "keys" / "other.key"
    signing.ensure_key(other)
    src = _extract(base, root / "w-signer")
    _set_version(src, 9)
    out.bad["unknown-signer"] = bad / "unknown-signer.bundle"
    pack_bundle(src, out.bad["unknown-signer"], signing.load_private_key(other))

    src = _extract(base, root / "w-shape")
    _set_version(src, 9)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [-1, 50, 6]
    (src / "manifest.json").write_text(json.dumps(manifest))
    out.bad["wrong-input-shape"] = bad / "wrong-input-shape.bundle"
    pack_bundle(src, out.bad["wrong-input-shape"], private)

    src = _extract(base, root / "w-vectors")
    _set_version(src, 9)
    vectors = TestVectors.load(src / "test_vectors.npz")
    wrong = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in vectors.outputs.items()}
    TestVectors(vectors.inputs, wrong, vectors.atol, vectors.rtol).save(src / "test_vectors.npz")
    out.bad["failing-vectors"] = bad / "failing-vectors.bundle"
    pack_bundle(src, out.bad["failing-vectors"], private)
    (bad / "tmp.bundle").unlink()
    return out
