"""yamllint (configured by .yamllint.yaml) passes on every YAML file of the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.manifests.rendering import MANIFESTS, REPO

CONFIG = REPO / ".yamllint.yaml"


def repo_yaml_files() -> list[Path]:
    """Tracked and new (not git-ignored) files; falls back to a walk outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True, timeout=30,
        ).stdout.decode()  # fmt: skip
        names = [REPO / n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [p for p in REPO.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    config = YamlLintConfig(file=str(CONFIG))
    return sorted(
        p for p in names
        if p.is_file() and config.is_yaml_file(str(p)) and not config.is_file_ignored(str(p))
    )  # fmt: skip


def test_yamllint_clean_including_warnings() -> None:
    config = YamlLintConfig(file=str(CONFIG))
    files = repo_yaml_files()
    manifests = [f for f in files if f.is_relative_to(MANIFESTS)]
    assert len(manifests) >= 10, "the manifests were not found: the lint would be vacuous"
    problems = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for p in linter.run(fh, config, str(path.relative_to(REPO))):
                problems.append(f"{path.relative_to(REPO)}:{p.line}:{p.column}: {p.level}: "
                                f"{p.message} ({p.rule})")  # fmt: skip
    assert problems == []


def test_yamllint_config_catches_implicit_octal() -> None:
    config = YamlLintConfig(file=str(CONFIG))
    problems = list(linter.run("mode: 0440\n", config))
    assert [p.rule for p in problems] == ["octal-values"]
