"""compose.yaml cannot drift from the code: every service command is a real CLI with real
flags that parse, the images are the ones docker/images.py builds, every service runs on
a read-only root and publishes ports on the host's loopback only."""

from __future__ import annotations

import importlib

import pytest
import yaml

from tests.images.podman import images_module
from tests.manifests.rendering import REPO
from tests.manifests.test_drift import PROCESSES, flag_problems, parser_for

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_the_stack_is_the_demos() -> None:
    commands = [s.get("command", [""])[0] for s in SERVICES.values()]
    assert commands.count("edge-agent") == 2
    assert {"offload-server", "cloud-gateway"} <= set(commands)
    assert "mosquitto" in SERVICES


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items()
                                        if s.get("command", [""])[0] in PROCESSES))  # fmt: skip
def test_commands_parse(name: str) -> None:
    words = [str(w) for w in SERVICES[name]["command"]]
    process = PROCESSES[words[0]]
    parser, rest = parser_for(process, words[1:])
    assert flag_problems(name, parser, rest) == []
    try:
        importlib.import_module(process.cli).build_parser().parse_args(words[1:])
    except SystemExit as exc:
        raise AssertionError(f"compose.yaml {name}: {' '.join(words)} does not parse") from exc


def test_images_are_the_built_ones() -> None:
    images = images_module()
    built = {tag for image in images.IMAGES for tag in image.tags}
    used = {s["image"] for s in SERVICES.values()}
    assert used <= built, used - built
    for service in SERVICES.values():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_read_only_root_and_loopback_ports(name: str) -> None:
    service = SERVICES[name]
    assert service.get("read_only") is True, f"{name}: root filesystem must be read-only"
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).exists(), f"{name}: {source} does not exist"
        else:
            assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"
