"""One-file model bundles: pack, sign, unpack safely, verify completely.

A bundle ``<name>-<version>.bundle`` is a gzip'd tar of ``manifest.json``, ``model.onnx``,
``test_vectors.npz`` and ``signature.json``. The signature covers the manifest's canonical
JSON, which includes the sha256 of every other file, so one signature pins all bytes.
Bundles arrive from the network: every check raises its own :class:`BundleError`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from pathlib import Path

import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from models import signing
from models.errors import (
    BundleTooLarge,
    CorruptBundle,
    EdgecloudError,
    HashMismatch,
    SpecMismatch,
    TestVectorMismatch,
    UnsafeArchive,
)
from models.manifest import DType, Manifest, TensorSpec
from models.vectors import TestVectors

MANIFEST = "manifest.json"
MODEL = "model.onnx"
VECTORS = "test_vectors.npz"
SIGNATURE = "signature.json"
#: Files the manifest hashes; the manifest and signature are covered by the signature.
PAYLOAD: tuple[str, ...] = (MODEL, VECTORS)
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_MAX_MEMBERS = 64
_ONNX_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
}
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_sha256(file: Path | str) -> str:
    """sha256 of the bundle file as downloaded (what desired-state messages pin)."""
    return sha256_file(file)


def bundle_filename(manifest: Manifest) -> str:
    return f"{manifest.name}-{manifest.version}.bundle"


def read_manifest(directory: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((directory / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CorruptBundle(f"{MANIFEST} is missing") from None
    except ValidationError as exc:
        raise CorruptBundle(f"invalid {MANIFEST}: {exc}") from None


def pack_bundle(
    src_dir: Path | str, out_file: Path | str, private_key: Ed25519PrivateKey
) -> Manifest:
    """Hash the payload into ``src_dir/manifest.json``, sign it, write one tar.gz file.

    The archive is byte-reproducible: sorted members, zero mtimes/owners, gzip mtime 0.
    """
    src = Path(src_dir)
    manifest = read_manifest(src)
    files = {name: sha256_file(src / name) for name in PAYLOAD}
    manifest = manifest.model_copy(update={"files": files})
    manifest = Manifest.model_validate(manifest.model_dump())  # re-validate the update
    manifest_bytes = manifest.model_dump_json(indent=2).encode()
    signature = json.dumps(signing.sign(private_key, manifest.canonical_json()), indent=2)
    members = {
        MANIFEST: manifest_bytes,
        SIGNATURE: signature.encode(),
        **{name: (src / name).read_bytes() for name in PAYLOAD},
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(members[name]))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    tmp.replace(out)
    return manifest


def _check_member(member: tarfile.TarInfo) -> str:
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchive(f"absolute or non-portable member path {name!r}")
    if ".." in parts:
        raise UnsafeArchive(f"member path escapes the bundle: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"link member {name!r} -> {member.linkname!r}")
    if not member.isreg():
        raise UnsafeArchive(f"member {name!r} is not a regular file")
    if len(parts) != 1 or not name or name.startswith("."):
        raise UnsafeArchive(f"unexpected member path {name!r}: bundles are flat")
    return name


def unpack_bundle(
    bundle_file: Path | str,
    dest_dir: Path | str,
    trusted_keys: signing.TrustedKeys,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    run_vectors: bool = True,
) -> Manifest:
    """Extract ``bundle_file`` into the new or empty ``dest_dir`` and fully verify it."""
    bundle = Path(bundle_file)
    dest = Path(dest_dir)
    if bundle.stat().st_size > max_bytes:
        raise BundleTooLarge(f"bundle is {bundle.stat().st_size} bytes; limit {max_bytes}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise CorruptBundle(f"destination {dest} is not empty")
    total = 0
    try:
        with tarfile.open(bundle, mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > _MAX_MEMBERS:
                    raise UnsafeArchive(f"more than {_MAX_MEMBERS} members")
                name = _check_member(member)
                total += member.size
                if total > max_bytes:
                    raise BundleTooLarge(f"unpacked content exceeds {max_bytes} bytes")
                src = tar.extractfile(member)
                if src is None:
                    raise UnsafeArchive(f"member {name!r} has no content")
                target = dest / name
                if target.exists():
                    raise UnsafeArchive(f"duplicate member {name!r}")
                with open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptBundle(f"unreadable bundle {bundle.name}: {exc}") from None
    return verify_bundle_dir(dest, trusted_keys, run_vectors=run_vectors)


def graph_specs(model_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs declared by an ONNX graph (-1 for symbolic/unknown dims)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others: all mean "not a model"
        raise CorruptBundle(f"{model_path.name} is not a valid ONNX model: {exc}") from None

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _ONNX_DTYPES:
            raise SpecMismatch(f"{value.name!r} has unsupported ONNX type {tensor.elem_type}")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(name=value.name, dtype=_ONNX_DTYPES[tensor.elem_type], shape=dims)

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in model.graph.output)


def check_specs(manifest: Manifest, model_path: Path) -> None:
    inputs, outputs = graph_specs(model_path)
    for kind, declared, actual in (
        ("inputs", manifest.inputs, inputs),
        ("outputs", manifest.outputs, outputs),
    ):
        if tuple(declared) != actual:
            raise SpecMismatch(f"manifest {kind} {list(declared)} != ONNX graph {list(actual)}")


def verify_bundle_dir(
    directory: Path | str, trusted_keys: signing.TrustedKeys, *, run_vectors: bool = True
) -> Manifest:
    """Signature, sha256 of every file, graph specs, and (optionally) the test vectors."""
    root = Path(directory)
    manifest = read_manifest(root)
    try:
        document = json.loads((root / SIGNATURE).read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise CorruptBundle(f"missing or invalid {SIGNATURE}: {exc}") from None
    if not isinstance(document, dict):
        raise CorruptBundle(f"{SIGNATURE} must be a JSON object")
    signing.verify(document, manifest.canonical_json(), trusted_keys)
    verify_hashes(root, manifest)
    check_specs(manifest, root / MODEL)
    if run_vectors:
        check_vectors(root)
    return manifest


def verify_hashes(root: Path, manifest: Manifest) -> None:
    missing = [name for name in PAYLOAD if name not in manifest.files]
    if missing:
        raise HashMismatch(f"manifest does not hash {missing}")
    present = {p.name for p in root.iterdir()} - {MANIFEST, SIGNATURE}
    extra = present - set(manifest.files)
    if extra:
        raise HashMismatch(f"files not covered by the manifest: {sorted(extra)}")
    for name, want in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise CorruptBundle(f"{name} is listed in the manifest but missing")
        if sha256_file(path) != want:
            raise HashMismatch(f"sha256 of {name} does not match the manifest")


def check_vectors(root: Path) -> None:
    """Run the test vectors on ONNX Runtime CPU, the reference every backend must match."""
    from models.backends.onnxruntime import OrtBackend

    vectors = TestVectors.load(root / VECTORS)
    try:
        backend = OrtBackend(root / MODEL)
        try:
            actual = backend.infer(vectors.inputs)
        finally:
            backend.close()
    except EdgecloudError as exc:
        raise TestVectorMismatch(f"test vectors do not run: {exc.message}") from None
    vectors.check(actual)
