"""Fixtures for the model layer: one real build of the built-in models per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models import signing
from models.recipes import BuildResult, build_all


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The three built-in models, built, signed, packed and installed (read-only for tests)."""
    return build_all(tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="session")
def dev_key(built: BuildResult) -> Ed25519PrivateKey:
    return signing.load_private_key(built.key)


@pytest.fixture(scope="session")
def trusted(built: BuildResult) -> signing.TrustedKeys:
    return signing.load_trusted_keys(built.public_key)


@pytest.fixture
def edge_bundle(built: BuildResult) -> Path:
    return built.bundles["motion-edge"]
