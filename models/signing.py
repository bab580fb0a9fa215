"""Ed25519 keys and signatures for model bundles.

Private keys are PKCS#8 PEM files (mode 0600); public keys are SubjectPublicKeyInfo PEM
files named ``<name>.pub``. A key id is the first 16 hex digits of the sha256 of the raw
public key, so a signature names its signer without revealing anything secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.errors import BadSignature, ConfigError, NotFound, UnknownSigner

TrustedKeys = dict[str, Ed25519PublicKey]


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(path_private: Path | str) -> Path:
    """``keys/dev.key`` -> ``keys/dev.pub``."""
    return Path(path_private).with_suffix(".pub")


def generate_key(path_private: Path | str) -> Path:
    """Create a new key pair; returns the public key path. Never overwrites a key."""
    path = Path(path_private)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two builders racing must not silently replace each other's signing key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = public_key_path(path)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pub


def ensure_key(path_private: Path | str) -> Ed25519PrivateKey:
    """Load the key at ``path_private``, generating it (and its .pub) when missing."""
    path = Path(path_private)
    if not path.exists():
        # Another process may create it first; then we load theirs.
        with contextlib.suppress(FileExistsError):
            generate_key(path)
    return load_private_key(path)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise NotFound(f"signing key {path} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"public key {path} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an ed25519 public key")
    return key


def load_trusted_keys(paths_or_dir: Path | str | Iterable[Path | str]) -> TrustedKeys:
    """Public keys by key id, from ``.pub`` files and/or directories of them."""
    items = [paths_or_dir] if isinstance(paths_or_dir, str | Path) else list(paths_or_dir)
    keys: TrustedKeys = {}
    for item in items:
        path = Path(item)
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        for file in files:
            key = load_public_key(file)
            keys[key_id(key)] = key
    return keys


def sign(private_key: Ed25519PrivateKey, data: bytes) -> dict[str, str]:
    """A signature document: ``{"key_id": ..., "signature": base64}``."""
    return {
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(data)).decode(),
    }


def verify(document: dict[str, str], data: bytes, trusted_keys: TrustedKeys) -> str:
    """Check a signature document over ``data``; returns the signer's key id."""
    kid = document.get("key_id")
    if not isinstance(kid, str) or kid not in trusted_keys:
        raise UnknownSigner(f"bundle signed by untrusted key {kid!r}")
    try:
        signature = base64.b64decode(document.get("signature", ""), validate=True)
        trusted_keys[kid].verify(signature, data)
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise BadSignature(f"signature by key {kid} does not verify") from None
    return kid
