"""The images every test here runs: built once per session (podman's layer cache makes
that seconds when nothing changed); a missing podman fails the tests, it never skips them."""

from __future__ import annotations

import pytest

from tests.images.podman import images_module


@pytest.fixture(scope="session")
def built_images() -> list[dict[str, object]]:
    """Build (or reuse, through podman's layer cache) every image; fails without podman."""
    images = images_module()
    try:
        return images.build_all("auto")
    except images.BuildError as exc:
        pytest.fail(f"building the images failed: {exc}")
