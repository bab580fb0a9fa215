"""``python docker/images.py lint``: the static checks that stand in for a build of the
images this machine cannot build (Jetson, GPU), run on every Dockerfile."""

from __future__ import annotations

from pathlib import Path

from tests.images.podman import images_module


def test_every_dockerfile_passes_lint() -> None:
    assert images_module().lint() == []


def test_lint_catches_a_missing_copy_source_and_a_root_final_stage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM x AS build\nCOPY no/such/dir ./dir\nFROM x AS runtime\nUSER 0:0\n")
    assert images_module().dockerfile_problems(bad) == [
        "bad.Dockerfile: COPY source no/such/dir does not exist",
        "bad.Dockerfile: final stage must run as a numeric non-root USER",
    ]
