"""KServe V2 HTTP/REST: the stock tritonclient.http against a real offload-server process
serving every built-in model, compared with direct ONNX Runtime; errors, health, stats."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from models.recipes import RECIPES, build_all
from tests.offload.conftest import ADMIN, ServerProcess


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_all(tmp_path_factory.mktemp("http-models")).repository


@pytest.fixture(scope="module")
def server(built: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(built, "--max-message-bytes", str(2 * 1024 * 1024))
    yield proc
    proc.terminate()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(server.http_target)
    yield client
    client.close()


def session(built: Path, model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the server runs it
    return ort.InferenceSession(
        str(built / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def http_call(
    server: ServerProcess,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, Any, Any]:
    request = urllib.request.Request(
        f"http://{server.http_target}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, head = response.status, response.headers
    except urllib.error.HTTPError as exc:
        raw, status, head = exc.read(), exc.code, exc.headers
    return status, (json.loads(raw) if raw else None), head


MODELS = sorted(RECIPES)


def test_health_and_server_metadata(
    client: th.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgecloud-offload"
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(meta["extensions"])
    assert http_call(server, "/healthz")[:2] == (200, {"status": "ok"})
    status, body, _ = http_call(server, "/readyz")
    assert status == 200 and body == {"status": "ready", "models": len(MODELS)}


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_and_config_match_grpc(
    client: th.InferenceServerClient, server: ServerProcess, built: Path, model: str
) -> None:
    assert client.is_model_ready(model) and client.is_model_ready(model, "1")
    assert not client.is_model_ready(model, "9")
    meta = client.get_model_metadata(model)
    graph = session(built, model)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == [i.name for i in graph.get_inputs()]
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in graph.get_outputs()]
    assert meta["inputs"][0]["shape"][0] == -1 and meta["inputs"][0]["datatype"] == "FP32"
    assert client.get_model_metadata(model, "1") == meta
    config = client.get_model_config(model)
    grpc_config = tg.InferenceServerClient(server.target).get_model_config(model).config
    assert config["name"] == model and config["max_batch_size"] == grpc_config.max_batch_size
    assert config["input"][0]["dims"] == list(grpc_config.input[0].dims)  # numbers, not strings
    assert config["input"][0]["data_type"] == "TYPE_FP32"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("rows", [1, 33])
@pytest.mark.parametrize("model", MODELS)
def test_infer_equals_direct_onnxruntime(
    client: th.InferenceServerClient, built: Path, model: str, rows: int, binary: bool
) -> None:
    graph = session(built, model)
    spec = graph.get_inputs()[0]
    x = np.random.default_rng(rows).standard_normal((rows, *spec.shape[1:])).astype(np.float32)
    tensor = th.InferInput(spec.name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out_names = [o.name for o in graph.get_outputs()]
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in out_names]
    result = client.infer(model, [tensor], outputs=outputs, request_id=f"r{rows}")
    assert result.get_response()["id"] == f"r{rows}"
    assert result.get_response()["model_version"] == "1"
    expected = graph.run(None, {spec.name: x})
    for name, want in zip(out_names, expected, strict=True):
        np.testing.assert_array_equal(result.as_numpy(name), want)


def test_default_outputs_come_binary(client: th.InferenceServerClient, built: Path) -> None:
    """No outputs named: tritonclient asks binary_data_output and decodes every output."""
    x = np.ones((2, 100, 6), np.float32)
    tensor = th.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("motion-edge", [tensor]).as_numpy("probabilities")
    np.testing.assert_array_equal(got, session(built, "motion-edge").run(None, {"input": x})[0])


def infer_body(shape: list[int], data: Any = None, **extra: Any) -> bytes:
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": shape}
    if data is not None:
        tensor["data"] = data
    tensor.update(extra)
    return json.dumps({"inputs": [tensor]}).encode()


E = "/v2/models/motion-edge/infer"
GOOD = infer_body([1, 100, 6], [0.0] * 600)
#: Declares 2400 binary bytes after the JSON header, and sends none.
NO_BINARY = infer_body([1, 100, 6], parameters={"binary_data_size": 2400})


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("/v2/models/nope/infer", GOOD, {}, 404, "'nope' is not loaded"),
        ("/v2/models/motion-edge/versions/7/infer", GOOD, {}, 404,
         "version 7 of 'motion-edge' is not ready"),
        (E, b"{not json", {}, 400, "body is not valid JSON"),
        (E, b"[" * 100_000 + b"]" * 100_000, {}, 400, "JSON nested too deeply"),
        (E, infer_body([1, 100, 5], [0.0] * 500), {}, 400,
         "has shape [1, 100, 5], motion-edge:1 expects [-1, 100, 6]"),
        (E, infer_body([0, 100, 6], []), {}, 400,
         "empty tensor (zero rows)"),
        (E, infer_body([1, 100, 6], [0.0] * 599), {}, 400,
         "599 values in data, shape [1, 100, 6] needs 600"),
        (E, infer_body([1, 100, 6], ["a"] * 600), {}, 400,
         "'data' is not an array of FP32"),
        (E,
         infer_body([1, 100, 6], [0.0] * 600, parameters={"binary_data_size": 2400}), {}, 400,
         "both 'data' and binary data given"),
        (E, NO_BINARY,
         {"Inference-Header-Content-Length": str(len(NO_BINARY))}, 400,
         "runs past the end of the body"),
        (E, b"{}", {"Inference-Header-Content-Length": "99"}, 400,
         "outside the 2-byte body"),
        (E, b"x" * (3 * 1024 * 1024), {}, 413, "exceeds 2097152 bytes"),
        ("/v2/nothing/here", None, {}, 404, "Not Found"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line_errors(
    server: ServerProcess,
    client: th.InferenceServerClient,
    built: Path,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    got, doc, _ = http_call(server, path, body, headers)
    assert got == status, doc
    assert isinstance(doc, dict) and set(doc) == {"error"} and message in doc["error"], doc
    assert "\n" not in doc["error"]
    # The server keeps serving good requests.
    x = np.ones((1, 100, 6), np.float32)
    tensor = th.InferInput("input", [1, 100, 6], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(
        client.infer("motion-edge", [tensor]).as_numpy("probabilities"),
        session(built, "motion-edge").run(None, {"input": x})[0],
    )


def test_statistics_match_requests_sent_grpc_and_http(
    server: ServerProcess, client: th.InferenceServerClient
) -> None:
    model = "vibration-anomaly"
    grpc_client = tg.InferenceServerClient(server.target)

    def success() -> int:
        stats = grpc_client.get_inference_statistics(model, "1").model_stats
        assert len(stats) == 1 and stats[0].version == "1"
        return stats[0].inference_stats.success.count

    before = success()
    x = np.zeros((3, 256, 3), np.float32)
    n_http, n_grpc = 5, 4
    for _ in range(n_http):
        tensor = th.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.infer(model, [tensor])
    for _ in range(n_grpc):
        tensor = tg.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        grpc_client.infer(model, [tensor])
    with pytest.raises(InferenceServerException):  # a failure is counted as one
        bad = tg.InferInput("input", [3, 256, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 256, 2), np.float32))
        grpc_client.infer(model, [bad])
    assert success() == before + n_http + n_grpc

    stats = grpc_client.get_inference_statistics(model).model_stats[0]
    inf = stats.inference_stats
    assert inf.fail.count >= 1
    assert inf.queue.count == inf.compute_infer.count == inf.success.count
    assert inf.compute_infer.ns > 0 and inf.success.ns >= inf.compute_infer.ns
    assert stats.inference_count >= 3 * (n_http + n_grpc) and stats.execution_count >= 1
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert stats.last_inference > 0

    doc = client.get_inference_statistics(model, "1")
    (entry,) = doc["model_stats"]
    assert entry["inference_stats"]["success"]["count"] == inf.success.count
    assert 3 in {b["batch_size"] for b in entry["batch_stats"]}
    everything = client.get_inference_statistics()["model_stats"]
    assert {e["name"] for e in everything} == set(MODELS)
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.get_inference_statistics("nope")
    with pytest.raises(InferenceServerException, match="not loaded"):
        grpc_client.get_inference_statistics("nope")


def test_repository_over_http_needs_an_admin(
    server: ServerProcess, client: th.InferenceServerClient
) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} >= {(n, "READY") for n in MODELS}
    with pytest.raises(InferenceServerException, match="needs an admin credential"):
        client.unload_model("motion-cloud")
    with pytest.raises(InferenceServerException, match="admin token not accepted"):
        client.unload_model("motion-cloud", headers={"Authorization": "Bearer wrong-token-123456"})
    assert client.is_model_ready("motion-cloud")
    unload = "/v2/repository/models/motion-cloud/unload"
    status, doc, _ = http_call(server, unload, b"", method="POST")
    assert status == 401 and "needs an admin credential" in doc["error"]
    client.unload_model("motion-cloud", headers=ADMIN)
    assert not client.is_model_ready("motion-cloud")
    client.load_model("motion-cloud", headers=ADMIN)
    assert client.is_model_ready("motion-cloud")
    status, doc, _ = http_call(
        server,
        "/v2/repository/models/motion-cloud/load",
        json.dumps({"parameters": {"version": "\uff11"}}).encode(),
        ADMIN,
    )
    assert status == 400 and "must be an integer" in doc["error"]


async def test_readyz_and_v2_ready_turn_false_when_draining(repository: Path) -> None:
    import aiohttp

    from offload.server import serve
    from offload.settings import OffloadSettings

    settings = OffloadSettings(
        repository=repository, grpc_port=0, http_port=0, metrics_port=-1, workers=1
    )
    async with serve(settings) as srv, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{srv.http_port}"
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
        srv.core.accepting = False  # what SIGTERM does first
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503 and (await response.json())["status"] == "draining"
        async with http.get(f"{base}/v2/health/ready") as response:
            assert response.status == 400
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200  # still alive
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
        async with http.post(f"{base}/v2/models/affine/infer", json=body) as response:
            assert response.status == 503
            assert (await response.json()) == {"error": "server is shutting down"}
