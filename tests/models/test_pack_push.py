"""A user's own model through a real ``cloud-gateway serve`` process: pack with the CLI,
push, read the manifest back; and a bundle no agent can serve refused at upload (422)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.cli import main as gateway_main
from cloud_gateway.client import ApiError, GatewayClient
from models import signing
from tests.conftest import free_port, wait_for_port
from tests.models.test_pack import FULL, pack_args, unservable_bundle
from tests.models.user_models import classifier

ADMIN = "admin-token-own"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "user.key"
    signing.generate_key(key)
    return key


@pytest.fixture
def served(tmp_path: Path, mosquitto: Any, keys: Path, topic_prefix: str) -> Iterator[str]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cloud_gateway", "serve", "--port", str(port)),
            *("--db-path", str(tmp_path / "gw.sqlite"), "--blob-dir", str(tmp_path / "blobs")),
            *("--broker", mosquitto.url, "--topic-prefix", topic_prefix),
            *("--trusted-keys", str(keys.parent), "--tokens-file", str(tokens)),
        ],
        env=env,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_pack_push_and_read_the_manifest(
    served: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = classifier(tmp_path / "tiny.onnx", features=5, classes=2)
    assert gateway_main(pack_args(model, tmp_path / "out", keys, *FULL)) == 0
    bundle = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert gateway_main(["--url", served, "--token", ADMIN, "models", "push", str(bundle)]) == 0
    assert capsys.readouterr().out.startswith("pushed tiny:1 sha256=")
    client = GatewayClient(served, ADMIN)
    row = client.get("/api/v1/models/tiny/versions/1")
    manifest = row["manifest"]
    assert manifest["inputs"] == [{"name": "x", "dtype": "FP32", "shape": [-1, 5]}]
    assert manifest["outputs"] == [{"name": "probabilities", "dtype": "FP32", "shape": [-1, 2]}]
    assert manifest["preprocessing"]["window"] == 1
    assert manifest["preprocessing"]["channels"] == ["f1", "f2", "f3", "f4", "f5"]
    assert manifest["postprocessing"]["labels"] == ["ok", "fault"]


def test_push_of_an_unservable_bundle_is_refused_with_422(
    served: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = signing.load_private_key(keys)
    rank4 = unservable_bundle(tmp_path, key, dims=["N", 2, 3, 4], window=2)
    client = GatewayClient(served, ADMIN)
    with pytest.raises(ApiError) as err:
        client.push(rank4)
    assert err.value.http_status == 422
    assert err.value.error == "unservable-model"
    assert err.value.message.startswith("odd:1 input 'x' has shape [N, 2, 3, 4]")
    assert "accepted: [N, 2, 3] (N, window, channels); [N, 6] (N, window*channels" in (
        err.value.message
    )
    # The CLI says the same in one line; nothing was stored, so no rollout can name it.
    (tmp_path / "r3").mkdir()
    rank3 = unservable_bundle(tmp_path / "r3", key, dims=["N", 10, 3], window=20)
    assert gateway_main(["--url", served, "--token", ADMIN, "models", "push", str(rank3)]) == 1
    err_line = capsys.readouterr().err
    assert err_line.startswith("error: unservable-model: odd:1 input 'x' has shape [N, 10, 3]")
    assert "[N, 10, 3]" in err_line and "[N, 20, 3]" in err_line
    assert client.get("/api/v1/models") == []
    with pytest.raises(ApiError) as err:
        client.post("/api/v1/rollouts", {"model": "odd", "version": 1, "strategy": "all-at-once"})
    assert err.value.http_status == 404
    assert err.value.message == "model version odd:1 is not in the registry"
