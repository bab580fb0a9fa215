"""Static checks of the Dockerfiles (no container engine runs here): multi-stage, pinned
bases, non-root final stage, real source paths, and exactly the images the manifests use."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.manifests.rendering import REPO, TARGETS, containers, render

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def test_the_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "cloud-gpu.Dockerfile", "edge-cpu.Dockerfile", "edge-jetson.Dockerfile",
        "mosquitto.Dockerfile",
    ]  # fmt: skip


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_policy(path: Path) -> None:
    steps = instructions(path)
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    froms = [rest.split() for word, rest in steps if word == "FROM"]
    # Images that install Python packages build in one stage and copy the venv out;
    # the broker image only installs a Debian package.
    assert len(froms) >= 2 or path.name == "mosquitto.Dockerfile", "not a multi-stage build"
    stages = {f[2] for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    for f in froms:
        image = resolve(f[0], args)
        if image in stages:
            continue
        assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9._/-]+:[A-Za-z0-9._-]+", image), image
        assert not image.endswith(":latest"), image
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "final stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = [rest for word, rest in final if word == "CMD"][-1]
    assert cmd.strip('[]"').split('"')[0] in {*scripts, "/usr/sbin/mosquitto"}
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"


def test_manifest_images_are_built_by_a_documented_command() -> None:
    built = set()
    for path in DOCKERFILES:
        built |= set(re.findall(r"-t (ghcr\.io/edgecloud/[\w.-]+:[\w.-]+)", path.read_text()))
    used = {
        c.spec["image"]
        for t in TARGETS
        for c in containers(render(t))
        if c.spec["image"].startswith("ghcr.io/edgecloud/")
    }
    assert used <= built, f"images without a build command: {sorted(used - built)}"
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert {image for image in used if image not in deploy} == set()
