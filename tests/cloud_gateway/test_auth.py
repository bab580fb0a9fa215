"""Token store: file format, digests, role order."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_gateway.auth import Role, TokenStore, require, token_digest
from models.errors import ConfigError, PermissionDenied, Unauthenticated


def test_token_file_plain_and_hashed(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        f"# comment\n\nadmin s3cret\nviewer sha256:{token_digest('look-only')}  # hashed form\n"
    )
    store = TokenStore()
    store.load_file(path)
    assert store.authenticate("Bearer s3cret").role is Role.ADMIN
    assert store.authenticate("bearer look-only").role is Role.VIEWER
    for header in (None, "", "Bearer", "Basic s3cret", "Bearer wrong"):
        with pytest.raises(Unauthenticated):
            store.authenticate(header)


def test_bad_token_files(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    for text in ("root abc\n", "admin\n", "admin sha256:nothex\n"):
        path.write_text(text)
        with pytest.raises(ConfigError):
            TokenStore().load_file(path)
    with pytest.raises(ConfigError):
        TokenStore().load_file(tmp_path / "missing")


def test_roles_are_ordered() -> None:
    store = TokenStore()
    store.add(Role.AGENT, "a")
    principal = store.authenticate("Bearer a")
    require(principal, Role.VIEWER)
    require(principal, Role.AGENT)
    with pytest.raises(PermissionDenied):
        require(principal, Role.ADMIN)
