"""The versioned repository: install, activate, rollback, prune, integrity, concurrency."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from models import bundle, signing
from models.errors import ConfigError, Conflict, HashMismatch, NotFound, UnknownSigner
from models.recipes import build_model
from models.repository import ModelRepository


@pytest.fixture(scope="module")
def edge_versions(built, dev_key, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """motion-edge versions 1..6 (different seeds, so different bytes)."""
    out = tmp_path_factory.mktemp("versions")
    return {v: build_model("motion-edge", v, out, dev_key) for v in range(1, 7)}


def test_install_layout_and_first_version_becomes_active(
    edge_versions, trusted, tmp_path: Path
) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    manifest = repo.install(edge_versions[1])
    assert manifest.ref == "motion-edge:1"
    assert repo.models() == ["motion-edge"]
    assert repo.versions("motion-edge") == [1]
    assert repo.active("motion-edge") == 1
    assert repo.model_path("motion-edge", 1) == tmp_path / "motion-edge" / "1" / "model.onnx"
    assert repo.model_path("motion-edge") == repo.model_path("motion-edge", 1)
    assert (tmp_path / "motion-edge" / "config.pbtxt").is_file()
    assert repo.manifest("motion-edge", 1) == manifest
    repo.install(edge_versions[2])
    assert repo.active("motion-edge") == 1, "installing must not switch the active version"
    assert repo.verify("motion-edge", 2).version == 2


def test_install_is_idempotent_but_refuses_different_content(
    edge_versions, dev_key, trusted, tmp_path: Path
) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    repo.install(edge_versions[1])
    repo.install(edge_versions[1])
    assert repo.versions("motion-edge") == [1]
    other = build_model("motion-edge", 1, tmp_path / "other", dev_key, seed=99)
    with pytest.raises(Conflict):
        repo.install(other)


def test_install_rejects_untrusted_bundle_and_leaves_no_trace(edge_versions, tmp_path) -> None:
    signing.generate_key(tmp_path / "keys" / "stranger.key")
    only_stranger = signing.load_trusted_keys(tmp_path / "keys")
    repo = ModelRepository(tmp_path / "repo", trusted_keys=only_stranger)
    with pytest.raises(UnknownSigner):
        repo.install(edge_versions[1])
    assert repo.models() == []
    assert not list((tmp_path / "repo").glob("*/.staging-*"))
    with pytest.raises(ConfigError, match="trusted"):
        ModelRepository(tmp_path / "repo2").install(edge_versions[1])


def test_install_from_a_verified_directory(edge_versions, trusted, tmp_path: Path) -> None:
    bundle.unpack_bundle(edge_versions[3], tmp_path / "dir", trusted)
    repo = ModelRepository(tmp_path / "repo", trusted_keys=trusted)
    assert repo.install(tmp_path / "dir").version == 3


def test_activate_rollback_and_history(edge_versions, trusted, tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    for v in (1, 2, 3):
        repo.install(edge_versions[v])
    repo.activate("motion-edge", 3)
    repo.activate("motion-edge", 2)
    assert repo.active("motion-edge") == 2
    assert repo.rollback("motion-edge") == 3
    assert repo.rollback("motion-edge") == 1
    assert repo.active("motion-edge") == 1
    with pytest.raises(Conflict):
        repo.rollback("motion-edge")
    with pytest.raises(NotFound):
        repo.activate("motion-edge", 9)
    events = [(e["event"], e["version"]) for e in repo.history("motion-edge")]
    assert events[-2:] == [("rollback", 3), ("rollback", 1)]
    config = (tmp_path / "motion-edge" / "config.pbtxt").read_text()
    assert 'string_value: "1"' in config


def test_rollback_skips_pruned_versions(edge_versions, trusted, tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    for v in (1, 2, 3, 4):
        repo.install(edge_versions[v])
        repo.activate("motion-edge", v)
    assert repo.prune("motion-edge", keep=2) == [1, 2]
    assert repo.versions("motion-edge") == [3, 4]
    assert repo.rollback("motion-edge") == 3
    with pytest.raises(Conflict):
        repo.rollback("motion-edge")


def test_prune_keeps_newest_and_never_the_active(edge_versions, trusted, tmp_path) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    for v in (1, 2, 3, 4, 5):
        repo.install(edge_versions[v])
    assert repo.active("motion-edge") == 1
    assert repo.prune("motion-edge", keep=2) == [2, 3]
    assert repo.versions("motion-edge") == [1, 4, 5]
    assert repo.prune("motion-edge", keep=2) == []
    with pytest.raises(ConfigError):
        repo.prune("motion-edge", keep=0)


def test_integrity_check_on_open_reports_tampering(edge_versions, trusted, tmp_path) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    repo.install(edge_versions[1])
    repo.install(edge_versions[2])
    model = tmp_path / "motion-edge" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    reopened = ModelRepository(tmp_path)
    assert list(reopened.problems) == [("motion-edge", 2)]
    with pytest.raises(HashMismatch):
        reopened.verify("motion-edge", 2)
    reopened.verify("motion-edge", 1)


def test_crashed_install_leaves_previous_state(edge_versions, trusted, tmp_path) -> None:
    repo = ModelRepository(tmp_path, trusted_keys=trusted)
    repo.install(edge_versions[1])
    # What a crash between copy and rename leaves behind: a partial staging directory.
    stale = tmp_path / "motion-edge" / ".staging-crashed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"partial")
    assert repo.versions("motion-edge") == [1]
    assert repo.models() == ["motion-edge"]
    repo.install(edge_versions[2])
    assert not stale.exists()
    assert repo.versions("motion-edge") == [1, 2]


def test_unknown_names(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert repo.versions("nope") == []
    assert repo.active("nope") is None
    with pytest.raises(NotFound):
        repo.model_path("nope", 1)
    with pytest.raises(NotFound):
        repo.manifest("../etc", 1)


_INSTALLER = textwrap.dedent(
    """
    import sys
    from models import signing
    from models.repository import ModelRepository
    repo = ModelRepository(sys.argv[1], trusted_keys=signing.load_trusted_keys(sys.argv[2]),
                           check=False)
    for path in sys.argv[3:]:
        repo.install(path)
    """
)


def _complete(version_dir: Path) -> None:
    manifest = bundle.read_manifest(version_dir)
    bundle.verify_hashes(version_dir, manifest)
    assert (version_dir / "signature.json").is_file()


def test_two_processes_installing_concurrently_never_expose_partial_versions(
    built, edge_versions, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    repo = ModelRepository(root, check=False)
    pub = str(built.public_key)
    # Both processes also install version 3: identical bytes, so both must succeed.
    jobs = [[1, 3, 5], [2, 3, 4, 6]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INSTALLER, str(root), pub]
            + [str(edge_versions[v]) for v in job],
            stderr=subprocess.PIPE,
        )
        for job in jobs
    ]
    checked = 0
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for version in repo.versions("motion-edge"):
            _complete(root / "motion-edge" / str(version))
            checked += 1
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert repo.versions("motion-edge") == [1, 2, 3, 4, 5, 6]
    for version in repo.versions("motion-edge"):
        _complete(root / "motion-edge" / str(version))
    assert repo.active("motion-edge") in (1, 2)
    assert not list((root / "motion-edge").glob(".staging-*"))
    assert checked > 0, "the reader never saw a version while installs were running"
