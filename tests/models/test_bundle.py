"""Bundles: a clean round trip, and one test per rejection the issue lists."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models import bundle, signing
from models.errors import (
    BadSignature,
    BundleError,
    BundleTooLarge,
    HashMismatch,
    SpecMismatch,
    TestVectorMismatch,
    UnknownSigner,
    UnsafeArchive,
)
from models.manifest import Manifest
from models.vectors import TestVectors


def _extract(bundle_file: Path, dest: Path) -> Path:
    """Raw extraction of our own (trusted) bundle, to tamper with its parts."""
    dest.mkdir()
    with tarfile.open(bundle_file, "r:gz") as tar:
        for member in tar:
            (dest / member.name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return dest


def _tar(out: Path, files: dict[str, bytes], extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_round_trip_verifies_and_reports_manifest(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    manifest = bundle.unpack_bundle(edge_bundle, tmp_path / "out", trusted)
    assert manifest.name == "motion-edge" and manifest.version == 1
    assert set(manifest.files) == {"model.onnx", "test_vectors.npz"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["manifest.json", "model.onnx", "signature.json", "test_vectors.npz"]
    )
    assert bundle.verify_bundle_dir(tmp_path / "out", trusted) == manifest
    assert len(bundle.bundle_sha256(edge_bundle)) == 64


def test_all_three_builtins_verify(built, trusted: signing.TrustedKeys, tmp_path: Path) -> None:
    for name, path in built.bundles.items():
        assert bundle.unpack_bundle(path, tmp_path / name, trusted).name == name


def test_flipped_byte_in_onnx_is_a_hash_mismatch(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    onnx_bytes = bytearray(files["model.onnx"])
    onnx_bytes[len(onnx_bytes) // 2] ^= 0x01
    files["model.onnx"] = bytes(onnx_bytes)
    with pytest.raises(HashMismatch, match=r"model\.onnx"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files), tmp_path / "out", trusted)


def test_signature_over_other_content_is_bad_signature(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    manifest = Manifest.model_validate_json(files["manifest.json"])
    # Tighten the SLO without re-signing: the signature must catch it.
    forged = manifest.model_copy(update={"description": "forged", "slo_ms": 1.0})
    files["manifest.json"] = forged.model_dump_json().encode()
    with pytest.raises(BadSignature):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files), tmp_path / "out", trusted)


def test_unknown_signing_key_is_rejected(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    src = _extract(edge_bundle, tmp_path / "x")
    (src / "signature.json").unlink()
    stranger = Ed25519PrivateKey.generate()
    out = tmp_path / "stranger.bundle"
    bundle.pack_bundle(src, out, stranger)
    with pytest.raises(UnknownSigner):
        bundle.unpack_bundle(out, tmp_path / "out", trusted)


@pytest.mark.parametrize("name", ["../model.onnx", "sub/../../etc/x", "a/../../b"])
def test_member_with_dotdot_is_unsafe(
    name: str, edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    files[name] = b"evil"
    with pytest.raises(UnsafeArchive, match="escapes"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files), tmp_path / "out", trusted)
    assert not (tmp_path / "model.onnx").exists()


def test_absolute_member_path_is_unsafe(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    target = tmp_path / "abs-target"
    files = {str(target): b"evil", **files}
    with pytest.raises(UnsafeArchive, match="absolute"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files), tmp_path / "out", trusted)
    assert not target.exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_member_is_unsafe(
    kind: bytes, edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    del files["test_vectors.npz"]
    link = tarfile.TarInfo("test_vectors.npz")
    link.type = kind
    link.linkname = "/etc/passwd"
    with pytest.raises(UnsafeArchive, match="link"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files, (link,)), tmp_path / "out", trusted)


def test_device_member_is_unsafe(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    dev = tarfile.TarInfo("null")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(UnsafeArchive, match="regular"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", {}, (dev,)), tmp_path / "out", trusted)


def test_oversized_bundle_file_is_rejected(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    limit = edge_bundle.stat().st_size - 1
    with pytest.raises(BundleTooLarge):
        bundle.unpack_bundle(edge_bundle, tmp_path / "out", trusted, max_bytes=limit)


def test_decompression_bomb_is_rejected_while_extracting(
    edge_bundle: Path, trusted: signing.TrustedKeys, tmp_path: Path
) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    files["zeros.bin"] = bytes(8 * 1024 * 1024)  # compresses to a few KiB
    bomb = _tar(tmp_path / "b.bundle", files)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(BundleTooLarge, match="unpacked"):
        bundle.unpack_bundle(bomb, tmp_path / "out", trusted, max_bytes=1024 * 1024)


def _repack_with(
    edge_bundle: Path, tmp_path: Path, key: Ed25519PrivateKey, change: Callable[[Path], None]
) -> Path:
    src = _extract(edge_bundle, tmp_path / "x")
    (src / "signature.json").unlink()
    change(src)
    out = tmp_path / "changed.bundle"
    bundle.pack_bundle(src, out, key)  # properly re-hashed and signed by a trusted key
    return out


@pytest.mark.parametrize(
    "field, value",
    [("shape", [-1, 50, 6]), ("dtype", "FP64"), ("name", "x"), ("shape", [8, 100, 6])],
)
def test_manifest_disagreeing_with_graph_is_spec_mismatch(
    field: str, value: object, edge_bundle: Path, dev_key, trusted, tmp_path: Path
) -> None:
    def change(src: Path) -> None:
        data = json.loads((src / "manifest.json").read_text())
        data["inputs"][0][field] = value
        (src / "manifest.json").write_text(json.dumps(data))

    out = _repack_with(edge_bundle, tmp_path, dev_key, change)
    with pytest.raises(SpecMismatch):
        bundle.unpack_bundle(out, tmp_path / "out", trusted)


def test_output_dtype_mismatch_is_spec_mismatch(edge_bundle, dev_key, trusted, tmp_path) -> None:
    def change(src: Path) -> None:
        data = json.loads((src / "manifest.json").read_text())
        data["outputs"][0]["dtype"] = "FP16"
        (src / "manifest.json").write_text(json.dumps(data))

    with pytest.raises(SpecMismatch, match="outputs"):
        bundle.unpack_bundle(
            _repack_with(edge_bundle, tmp_path, dev_key, change), tmp_path / "o", trusted
        )


def test_unreproduced_test_vectors_are_rejected(
    edge_bundle: Path, dev_key, trusted, tmp_path: Path
) -> None:
    def change(src: Path) -> None:
        vectors = TestVectors.load(src / "test_vectors.npz")
        wrong = {k: v + np.float32(0.01) for k, v in vectors.outputs.items()}
        TestVectors(vectors.inputs, wrong, vectors.atol, vectors.rtol).save(
            src / "test_vectors.npz"
        )

    out = _repack_with(edge_bundle, tmp_path, dev_key, change)
    with pytest.raises(TestVectorMismatch, match="probabilities"):
        bundle.unpack_bundle(out, tmp_path / "out", trusted)
    # The same bundle passes when vectors are not run: the failure is the vectors alone.
    bundle.unpack_bundle(out, tmp_path / "out2", trusted, run_vectors=False)


def test_extra_unhashed_file_is_rejected(edge_bundle, trusted, tmp_path: Path) -> None:
    files = _files(_extract(edge_bundle, tmp_path / "x"))
    files["notes.txt"] = b"not covered by the signature"
    with pytest.raises(HashMismatch, match="not covered"):
        bundle.unpack_bundle(_tar(tmp_path / "b.bundle", files), tmp_path / "out", trusted)


def test_garbage_file_is_a_bundle_error(trusted, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BundleError):
        bundle.unpack_bundle(junk, tmp_path / "out", trusted)


def test_pack_is_byte_reproducible(edge_bundle: Path, dev_key, tmp_path: Path) -> None:
    src = _extract(edge_bundle, tmp_path / "x")
    a = bundle.pack_bundle(src, tmp_path / "a.bundle", dev_key)
    b = bundle.pack_bundle(src, tmp_path / "b.bundle", dev_key)
    assert a == b
    assert (tmp_path / "a.bundle").read_bytes() == (tmp_path / "b.bundle").read_bytes()
