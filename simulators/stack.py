"""The local stack: broker, offload-server, cloud-gateway, N edge agents, WAN proxies.

Children are started through :class:`simulators.procs.ProcessSet` (no orphans), each
waited for until healthy (port open or HTTP ``/readyz`` 200), and stopped in reverse
order. Every agent gets its own copy of the model repository (the updater installs new
versions into it) and its own site, subscribing only that site's sensor topics; its
offload traffic goes through a :class:`~simulators.wan.WanProxy` so the WAN is emulated
and its bytes counted.

Trust (docs/architecture.md §3): with a gateway and mosquitto, every agent is enrolled
in the gateway database before anything starts (its own token: gateway bearer token and
MQTT password), and the broker runs with the password file and ACL generated from that
registry (``cloud_gateway.brokerconf``; sensors and the result collector stay anonymous
with the generated anonymous rules). Broker credentials reach the children through the
environment, never argv (argv is logged). Agents trust the gateway's desired-state key.
With the embedded amqtt broker (no ACLs, no ``mosquitto_passwd``) the stack runs in the
documented permissive mode: a shared agent token and ``--require-enrolment false``;
desired state is still signed and verified.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from simulators.broker import BrokerKind, free_port, start_broker, wait_broker
from simulators.edge_device import EdgeDevice
from simulators.health import wait_http, wait_port
from simulators.procs import Managed, ProcessSet, command
from simulators.wan import WanEvent, WanProfile, WanProxy, netem_available

log = logging.getLogger(__name__)


class StackSpec(BaseModel):
    """What to start. Field names match the scenario TOML ``[stack]`` table."""

    model_config = ConfigDict(extra="forbid")

    agents: int = Field(default=3, ge=1, description="number of edge-agent processes")
    model: str = Field(default="motion-edge", description="model each agent serves")
    cloud_model: str | None = Field(default=None, description="cloud model (cascade)")
    policy: str = Field(default="slo-aware", description="routing policy of every agent")
    slo_ms: float = Field(default=100.0, gt=0, description="per-request SLO")
    max_batch: int = Field(default=64, ge=1)
    max_wait_ms: float = Field(default=2.0, ge=0)
    edge: EdgeDevice = Field(default_factory=EdgeDevice, description="edge device capacity")
    offload: bool = Field(default=True, description="start offload-server (the cloud tier)")
    offload_workers: int = Field(default=2, ge=1)
    gateway: bool = Field(default=True, description="start cloud-gateway")
    wan: WanProfile = Field(default_factory=WanProfile, description="agents <-> cloud link")
    wan_mode: Literal["proxy", "netem"] = Field(
        default="proxy",
        description="proxy: the asyncio WAN proxy; netem: kernel emulation where available "
        "(falls back to the proxy with a warning: only the proxy is implemented)",
    )
    wan_schedule: list[WanEvent] = Field(default_factory=list)
    heartbeat_s: float = Field(default=1.0, gt=0)
    agent_args: list[str] = Field(default_factory=list, description="extra edge-agent flags")
    ready_timeout_s: float = Field(default=60.0, gt=0)
    broker_kind: BrokerKind = Field(
        default="auto",
        description="auto: mosquitto if on PATH, else the embedded amqtt broker (warning)",
    )


@dataclass
class AgentHandle:
    agent_id: str
    site: str
    http_port: int
    repository: Path
    proc: Managed
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Stack:
    """Start with ``async with Stack(spec, workdir, models_dir) as stack:``."""

    def __init__(self, spec: StackSpec, workdir: Path, models_dir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.models_dir = models_dir
        self.procs = ProcessSet(workdir / "logs")
        self.broker_port = 0
        self.offload_port = 0
        self.offload: Managed | None = None
        self.wan: WanProxy | None = None
        self.gateway_port = 0
        self.gateway: Managed | None = None
        self.admin_token = secrets.token_urlsafe(18)
        self.agent_token = secrets.token_urlsafe(18)  # shared: permissive mode only
        self.agents: list[AgentHandle] = []
        #: agent id -> its enrolled token (the secure path; empty in permissive mode)
        self.agent_tokens: dict[str, str] = {}
        self.gateway_mqtt_password: str | None = None

    @property
    def secure(self) -> bool:
        """Agents are enrolled and the broker enforces the generated ACL."""
        return bool(self.agent_tokens)

    @property
    def broker_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def cloud_target(self) -> str | None:
        return self.wan.address if self.wan is not None else None

    @property
    def public_key(self) -> Path:
        return self.models_dir / "keys" / "dev.pub"

    def sites(self) -> list[str]:
        return [f"site-{i}" for i in range(self.spec.agents)]

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _enrol(self) -> str:
        """Enrol every agent and write the broker's passwd + acl; returns the mosquitto
        config lines that use them ("" in permissive mode)."""
        from bus.topics import Topics
        from cloud_gateway.brokerconf import write_broker_config
        from cloud_gateway.db import open_db
        from cloud_gateway.enrolment import Enrolments
        from simulators.broker import resolve_kind

        mosquitto = shutil.which("mosquitto")
        if (
            not self.spec.gateway
            or resolve_kind(self.spec.broker_kind, mosquitto) != "mosquitto"
            or shutil.which("mosquitto_passwd") is None
        ):
            if self.spec.gateway:
                log.warning(
                    "permissive mode: the broker cannot enforce per-agent ACLs (amqtt or no "
                    "mosquitto_passwd); agents share one token, enrolment is not required"
                )
            return ""
        gw = self.workdir / "gateway"
        gw.mkdir(parents=True, exist_ok=True)
        db = open_db(gw / "gateway.db")
        try:
            enrolments = Enrolments(db)
            for i in range(self.spec.agents):
                self.agent_tokens[f"agent-{i}"] = enrolments.enrol(f"agent-{i}", f"site-{i}")
            passwd, acl = write_broker_config(
                enrolments,
                self.workdir / "broker",
                Topics(),
                gateway_password_file=gw / "mqtt.password",
                anonymous_clients=True,  # sensors and the collector
            )
            self.gateway_mqtt_password = (gw / "mqtt.password").read_text().strip()
        finally:
            db.close()
        return f"password_file {passwd}\nacl_file {acl}\n"

    def _broker_url_for(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.broker_port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        extra = await asyncio.to_thread(self._enrol)
        broker, self.broker_port = start_broker(
            self.procs, self.workdir, self.spec.broker_kind, extra_conf=extra
        )
        waits = [wait_broker(broker, self.broker_port, self.spec.ready_timeout_s)]
        if self.spec.offload:
            self._start_offload()
            waits.append(
                wait_port(
                    "offload-server", self.offload, self.offload_port, self.spec.ready_timeout_s
                )
            )
        await asyncio.gather(*waits)
        if self.spec.wan_mode == "netem":
            _, why = netem_available()
            log.warning(
                "wan_mode=netem requested: %s; the netem mode is not implemented in this "
                "version, using the WAN proxy (same profile) instead",
                why,
            )
        if self.spec.offload:
            self.wan = await WanProxy(
                "127.0.0.1",
                self.offload_port,
                profile=self.spec.wan,
                schedule=self.spec.wan_schedule,
                name="wan-cloud",
            ).start()
        if self.spec.gateway:
            self._start_gateway()
            await wait_http(
                "cloud-gateway",
                self.gateway,
                f"{self.gateway_url}/healthz",
                self.spec.ready_timeout_s,
            )
        for i in range(self.spec.agents):
            self.agents.append(self._start_agent(i))
        await asyncio.gather(*(self.wait_agent(a) for a in self.agents))

    async def stop(self) -> None:
        self.procs.stop()
        if self.wan is not None:
            await self.wan.close()

    def _start_offload(self) -> None:
        repo = self.cloud_repository
        if not repo.exists():
            shutil.copytree(self.models_dir / "repository", repo)
        self.offload_port = free_port()
        # Model load/unload on the tier needs an admin: the gateway gets the same token.
        self.cloud_admin_token_file.write_text(self.admin_token + "\n")
        self.cloud_admin_token_file.chmod(0o600)
        self.offload = self.procs.spawn("offload-server", self.offload_argv())

    def offload_argv(self) -> list[str]:
        return [
            *command("offload-server", "offload"),
            "--repository", str(self.cloud_repository),
            "--host", "127.0.0.1",
            "--grpc-port", str(self.offload_port),
            "--metrics-port", "-1",
            "--http-port", "-1",
            "--admin-token-file", str(self.cloud_admin_token_file),
            "--backend", "onnxruntime",
            "--workers", str(self.spec.offload_workers),
            "--grace-s", "1",
        ]  # fmt: skip

    @property
    def cloud_repository(self) -> Path:
        return self.workdir / "cloud" / "repository"

    @property
    def cloud_admin_token_file(self) -> Path:
        return self.workdir / "cloud" / "admin-token"

    def _start_gateway(self) -> None:
        gw = self.workdir / "gateway"
        gw.mkdir(parents=True, exist_ok=True)
        tokens = gw / "tokens"
        # The shared agent token exists only in permissive mode; enrolled agents use theirs.
        shared = "" if self.secure else f"agent {self.agent_token}\n"
        tokens.write_text(f"admin {self.admin_token}\n{shared}")
        tokens.chmod(0o600)
        self.gateway_port = free_port()
        env = {}
        if self.gateway_mqtt_password:
            env["GATEWAY_BROKER"] = self._broker_url_for(
                "cloud-gateway", self.gateway_mqtt_password
            )
        self.gateway = self.procs.spawn("cloud-gateway", self.gateway_argv(), env)

    def gateway_argv(self) -> list[str]:
        gw = self.workdir / "gateway"
        tokens = gw / "tokens"
        argv = [
            *command("cloud-gateway", "cloud_gateway"),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(self.gateway_port),
            "--db-path", str(gw / "gateway.db"),
            "--blob-dir", str(gw / "blobs"),
            "--trusted-keys", str(self.public_key),
            "--tokens-file", str(tokens),
            "--desired-signing-key", str(self.gateway_key.with_suffix(".key")),
        ]  # fmt: skip
        if not self.secure:
            # Permissive mode: the broker URL carries no credentials, anyone may report.
            argv += ["--broker", self.broker_url, "--require-enrolment", "false"]
        if self.offload_port:
            # The gateway sits in the cloud next to the inference tier: no WAN between them.
            argv += ["--cloud", f"127.0.0.1:{self.offload_port}"]
            argv += ["--cloud-admin-token-file", str(self.cloud_admin_token_file)]
        return argv

    @property
    def gateway_key(self) -> Path:
        """The gateway's desired-state public key (the gateway creates the pair)."""
        return self.workdir / "gateway" / "desired.pub"

    def agent_env(self, i: int) -> dict[str, str]:
        """Broker credentials go through the environment: argv is logged."""
        token = self.agent_tokens.get(f"agent-{i}")
        return {"EDGE_BROKER": self._broker_url_for(f"agent-{i}", token)} if token else {}

    def agent_argv(self, i: int, http_port: int, repo: Path) -> list[str]:
        s = self.spec
        agent_id, site = f"agent-{i}", f"site-{i}"
        adir = self.workdir / "agents" / agent_id
        argv = [
            *command("edge-agent", "edge_agent"),
            "--agent-id", agent_id,
            "--site", site,
            *([] if agent_id in self.agent_tokens else ["--broker", self.broker_url]),
            "--repository", str(repo),
            "--model", s.model,
            "--policy", s.policy,
            "--slo-ms", str(s.slo_ms),
            "--http-host", "127.0.0.1",
            "--http-port", str(http_port),
            "--topics-filter", f"sensors/{site}/+/+",
            "--max-batch", str(s.max_batch),
            "--max-wait-ms", str(s.max_wait_ms),
            "--heartbeat-s", str(s.heartbeat_s),
            "--db-path", str(adir / "agent.db"),
            *s.edge.argv(),
        ]  # fmt: skip
        if self.cloud_target:
            argv += ["--cloud", self.cloud_target]
        if s.cloud_model:
            argv += ["--cloud-model", s.cloud_model]
        if self.spec.gateway:
            adir.mkdir(parents=True, exist_ok=True)
            token = adir / "gateway.token"
            token.write_text(self.agent_tokens.get(agent_id, self.agent_token))
            token.chmod(0o600)
            argv += [
                "--gateway-url", self.gateway_url,
                "--gateway-token-file", str(token),
                "--gateway-key", str(self.gateway_key),
                "--trusted-keys", str(self.public_key),
            ]  # fmt: skip
        return argv + list(s.agent_args)

    def _start_agent(self, i: int) -> AgentHandle:
        agent_id = f"agent-{i}"
        adir = self.workdir / "agents" / agent_id
        adir.mkdir(parents=True, exist_ok=True)
        repo = adir / "repository"
        if not repo.exists():
            shutil.copytree(self.models_dir / "repository", repo)
        port = free_port()
        argv, env = self.agent_argv(i, port, repo), self.agent_env(i)
        proc = self.procs.spawn(agent_id, argv, env)
        return AgentHandle(agent_id, f"site-{i}", port, repo, proc, argv, env)

    async def wait_agent(self, agent: AgentHandle) -> None:
        await wait_http(
            agent.agent_id, agent.proc, f"{agent.url}/readyz", self.spec.ready_timeout_s
        )

    async def kill_agent(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill agent ``i`` (a crash by default); :meth:`restart_agent` brings it back."""
        agent = self.agents[i]
        agent.proc.signal_group(sig)
        await asyncio.to_thread(agent.proc.proc.wait, 10)

    async def restart_agent(self, i: int) -> None:
        agent = self.agents[i]
        if agent.proc.alive():
            await asyncio.to_thread(agent.proc.stop)
        self.procs.children.remove(agent.proc)
        agent.proc = self.procs.spawn(agent.agent_id, agent.argv, agent.env)
        await self.wait_agent(agent)

    def agent_pids(self) -> list[int]:
        return [a.proc.pid for a in self.agents if a.proc.alive()]

    def all_pids(self) -> list[int]:
        return self.procs.pids()
