from __future__ import annotations

import stat
from pathlib import Path

import pytest

from models import signing
from models.errors import BadSignature, ConfigError, UnknownSigner


def test_generate_writes_private_0600_and_public_pem(tmp_path: Path) -> None:
    pub = signing.generate_key(tmp_path / "keys" / "a.key")
    assert pub == tmp_path / "keys" / "a.pub"
    assert stat.S_IMODE((tmp_path / "keys" / "a.key").stat().st_mode) == 0o600
    private = signing.load_private_key(tmp_path / "keys" / "a.key")
    public = signing.load_public_key(pub)
    assert signing.key_id(private.public_key()) == signing.key_id(public)
    assert len(signing.key_id(public)) == 16


def test_generate_never_overwrites_and_ensure_reuses(tmp_path: Path) -> None:
    signing.generate_key(tmp_path / "a.key")
    before = (tmp_path / "a.key").read_bytes()
    with pytest.raises(FileExistsError):
        signing.generate_key(tmp_path / "a.key")
    signing.ensure_key(tmp_path / "a.key")
    assert (tmp_path / "a.key").read_bytes() == before


def test_trusted_keys_from_directory_and_files(tmp_path: Path) -> None:
    a = signing.generate_key(tmp_path / "dir" / "a.key")
    b = signing.generate_key(tmp_path / "dir" / "b.key")
    c = signing.generate_key(tmp_path / "c.key")
    from_dir = signing.load_trusted_keys(tmp_path / "dir")
    assert set(from_dir) == {signing.key_id(signing.load_public_key(p)) for p in (a, b)}
    mixed = signing.load_trusted_keys([tmp_path / "dir", str(c)])
    assert len(mixed) == 3


def test_sign_verify_and_failures(tmp_path: Path) -> None:
    key = signing.ensure_key(tmp_path / "k.key")
    other = signing.ensure_key(tmp_path / "o.key")
    trusted = signing.load_trusted_keys(tmp_path / "k.pub")
    doc = signing.sign(key, b"payload")
    assert signing.verify(doc, b"payload", trusted) == signing.key_id(key.public_key())
    with pytest.raises(BadSignature):
        signing.verify(doc, b"payload!", trusted)
    with pytest.raises(BadSignature):
        signing.verify({**doc, "signature": "not base64!"}, b"payload", trusted)
    with pytest.raises(UnknownSigner):
        signing.verify(signing.sign(other, b"payload"), b"payload", trusted)


def test_loading_a_non_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(ConfigError):
        signing.load_public_key(tmp_path / "junk.pub")
