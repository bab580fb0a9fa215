"""ReplicaClient against three real offload-server processes: spreading, choice, failover."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from models.errors import ConfigError, NotFound, Unavailable
from offload.breaker import BreakerConfig
from offload.client import OffloadClient
from offload.replicas import ReplicaClient, join_host_port, parse_targets
from offload.tls import TlsFiles
from tests.conftest import free_port
from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH
from tests.offload.test_tls import Ca

#: The breaker interval the failover test measures against (how long a breaker stays open).
BREAKER = BreakerConfig(failure_threshold=3, open_s=2.0)


@pytest.fixture
def three(repository: Path) -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(repository, "--log-level", "WARNING") for _ in range(3)]
    yield servers
    for s in servers:
        s.kill()


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


def chosen(client: ReplicaClient, exclude: frozenset[str] = frozenset()) -> str:
    replica = client.choose(exclude)
    assert replica is not None
    return replica.target


def test_targets_parse_and_refuse_garbage() -> None:
    ts = parse_targets("a:1, 10.0.0.2:8001,[::1]:9,a:1")
    assert [str(t) for t in ts] == ["a:1", "10.0.0.2:8001", "[::1]:9"]
    assert [t.literal for t in ts] == [False, True, True]
    for bad in ("", "host", "host:port", "host:0", ":80", "h:70000"):
        with pytest.raises(ConfigError):
            parse_targets(bad)


async def test_a_dns_name_expands_to_every_address(three: list[ServerProcess]) -> None:
    port = three[0].port
    expected = {
        join_host_port(str(info[4][0]), port)
        for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    }
    async with ReplicaClient(f"localhost:{port}", resolve_every_s=0.1) as client:
        assert {r.target for r in client.replicas} == expected
        # Whatever localhost resolves to, the server listens on 127.0.0.1 only: an
        # address that refuses fails over to the one that answers.
        for i in range(6):
            out = await client.infer("affine", 1, {"x": rows(1, i)}, time.monotonic() + 5.0)
            np.testing.assert_allclose(out["y"], rows(1, i) * 2 + 1)
        await asyncio.sleep(0.3)  # re-resolution runs and finds the same set
        assert {r.target for r in client.replicas} == expected
        assert client.resolutions == 0
        assert client.stats.failures == 0


async def test_choice_prefers_fewer_in_flight_and_skips_open_breakers(
    three: list[ServerProcess],
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every call is refused
    spec = ",".join([three[0].target, three[1].target, dead])
    async with ReplicaClient(spec, breaker=BREAKER) as client:
        a, b, gone = client.replicas
        assert [r.target for r in client.replicas] == [three[0].target, three[1].target, dead]
        # Two choices among two callable replicas: the busier one is never chosen.
        a.begin()
        try:
            assert {chosen(client, frozenset({dead})) for _ in range(50)} == {b.target}
        finally:
            a.end()
        # Real calls: the dead replica's refusals fail over, then its breaker opens and
        # it is no longer chosen; no request fails.
        for i in range(30):
            out = await client.infer("affine", 2, {"x": rows(2, i)}, time.monotonic() + 5.0)
            np.testing.assert_allclose(out["y"], rows(2, i) * 2 + 2)
        assert gone.client.stats.breaker_state == "open"
        assert not gone.client.available
        # Idle (nothing in flight) the lower RTT wins the tie: never the dead replica.
        assert {chosen(client) for _ in range(50)} <= {a.target, b.target}
        assert a.client.stats.calls + b.client.stats.calls == 30
        assert gone.client.stats.calls == BREAKER.failure_threshold
        assert client.failovers == BREAKER.failure_threshold
        st = client.stats
        assert st.calls == 30 and st.failures == 0 and st.breaker_state == "closed"
        assert client.available
        # A request's own failure is not retried elsewhere: it fails once.
        with pytest.raises(NotFound):
            await client.infer("ghost", None, {"x": rows(1, 0)}, time.monotonic() + 5.0)
        assert client.stats.failures == 1 and client.failovers == BREAKER.failure_threshold


async def test_a_replica_killed_mid_load_fails_no_request(three: list[ServerProcess]) -> None:
    spec = ",".join(s.target for s in three)
    failures: list[BaseException] = []
    answered = 0
    stop = asyncio.Event()

    async with ReplicaClient(spec, breaker=BREAKER) as client:
        victim = next(r for r in client.replicas if r.target == three[1].target)

        async def worker(seed: int) -> None:
            nonlocal answered
            i = 0
            while not stop.is_set():
                x = rows(4, seed * 10_000 + i)
                try:
                    out = await client.infer("affine", 1, {"x": x}, time.monotonic() + 2.0)
                    np.testing.assert_allclose(out["y"], x * 2 + 1)
                    answered += 1
                except Exception as exc:  # every failure is the finding
                    failures.append(exc)
                i += 1

        tasks = [asyncio.create_task(worker(n)) for n in range(8)]
        await asyncio.sleep(1.0)
        before = {r.target: r.client.stats.calls for r in client.replicas}
        assert all(n > 10 for n in before.values()), before  # all three took load
        three[1].proc.kill()  # SIGKILL: no goodbye, calls in flight are reset
        killed_at = time.monotonic()
        while victim.client.stats.breaker_state != "open":
            assert time.monotonic() - killed_at < BREAKER.open_s, "breaker did not open"
            await asyncio.sleep(0.005)
        shifted_s = time.monotonic() - killed_at
        at_open = {r.target: r.client.stats.calls for r in client.replicas}
        await asyncio.sleep(1.0)  # still inside the open interval: the victim gets nothing
        after = {r.target: r.client.stats.calls for r in client.replicas}
        stop.set()
        await asyncio.gather(*tasks)

    assert failures == []
    assert answered > 100
    assert shifted_s < BREAKER.open_s
    assert after[victim.target] == at_open[victim.target]
    for s in (three[0], three[2]):
        assert after[s.target] - at_open[s.target] > 20
    print(f"\nanswered={answered} breaker open {shifted_s * 1000:.0f} ms after SIGKILL")


def _dns_only_server_cert(ca: Ca, directory: Path) -> TlsFiles:
    """A server certificate naming ``localhost`` only: no IP SAN to fall back on."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offload")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file = directory / "dns-only.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "dns-only.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert=cert_file, key=key_file, ca=None)


async def test_tls_replicas_dialled_by_address_check_the_name(
    tmp_path: Path, repository: Path
) -> None:
    ca = Ca(tmp_path, "edgecloud-ca")
    server_id = _dns_only_server_cert(ca, tmp_path)
    agent = ca.issue("edge", server=False)
    proc = ServerProcess(
        repository,
        "--tls-cert",
        str(server_id.cert),
        "--tls-key",
        str(server_id.key),
        "--tls-ca",
        str(ca.cert_file),
        "--log-level",
        "WARNING",
    )
    tls = TlsFiles(agent.cert, agent.key, ca.cert_file)
    try:
        async with ReplicaClient(f"localhost:{proc.port}", tls=tls) as client:
            # Expanded to addresses, yet the certificate (localhost only) is accepted.
            assert all(r.target[0] in "0123456789[" for r in client.replicas)
            out = await client.infer("affine", 1, {"x": rows(1, 7)}, time.monotonic() + 5.0)
            np.testing.assert_allclose(out["y"], rows(1, 7) * 2 + 1)
        # Dialled by the bare IP the same certificate is refused: the name is what counts.
        async with ReplicaClient(f"127.0.0.1:{proc.port}", tls=tls, max_retries=0) as client:
            with pytest.raises(Unavailable):
                await client.infer("affine", 1, {"x": rows(1, 7)}, time.monotonic() + 5.0)
    finally:
        proc.kill()


def test_the_agent_gets_the_replica_client_for_a_list_or_a_name() -> None:
    from edge_agent.app.settings import EdgeSettings
    from edge_agent.app.wiring import make_remote

    def remote(cloud: str) -> object:
        return make_remote(EdgeSettings(agent_id="a", site="s", cloud=cloud))

    assert type(remote("127.0.0.1:8001")) is OffloadClient  # one address: as before
    assert isinstance(remote("127.0.0.1:8001,127.0.0.1:8002"), ReplicaClient)
    assert isinstance(remote("offload-server-replicas.edgecloud.svc:8001"), ReplicaClient)
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        remote("offload-server")
