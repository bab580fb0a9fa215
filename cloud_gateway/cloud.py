"""Loading rolled-out versions into the cloud inference tier (V2 repository RPCs).

The offload server (like Triton) loads from its own model repository. When the gateway
shares that repository (``--cloud-repository``, a shared volume in Kubernetes) it first
installs the verified bundle there; then it asks the server to load the version.

The server only lets an admin load models: the gateway authenticates with a bearer token
(``--cloud-admin-token-file``, read at every load so a rotated token is picked up) and/or
a client certificate over mutual TLS (``--cloud-tls-cert``/``--cloud-tls-key``, whose CN
the server lists in ``--admin-subjects``); ``--cloud-tls-ca`` verifies the server.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import ConfigError, EdgecloudError
from offload.tls import TlsFiles

if TYPE_CHECKING:
    from cloud_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class CloudTier:
    """Puts a version into the cloud tier so offloaded requests find it."""

    def __init__(
        self,
        target: str,
        repository: Path | None = None,
        trusted_keys: dict[str, Any] | None = None,
        executor: Executor | None = None,
        *,
        tls: TlsFiles | None = None,
        admin_token_file: Path | None = None,
    ) -> None:
        self.target = target
        self.repository = repository
        self.trusted_keys = trusted_keys
        self.executor = executor
        self.tls = tls if tls is not None and (tls.ca or tls.cert or tls.key) else None
        self.admin_token_file = admin_token_file

    @classmethod
    def from_settings(
        cls,
        settings: GatewaySettings,
        trusted_keys: dict[str, Any] | None,
        executor: Executor | None,
    ) -> CloudTier:
        assert settings.cloud is not None
        return cls(
            settings.cloud,
            settings.cloud_repository,
            trusted_keys,
            executor,
            tls=TlsFiles(settings.cloud_tls_cert, settings.cloud_tls_key, settings.cloud_tls_ca),
            admin_token_file=settings.cloud_admin_token_file,
        )

    def _install(self, bundle: Path) -> None:
        from models.repository import ModelRepository

        assert self.repository is not None  # load() installs only with a repository
        repo = ModelRepository(self.repository, trusted_keys=self.trusted_keys, check=False)
        repo.install(bundle)

    def _token(self) -> str | None:
        if self.admin_token_file is None:
            return None
        try:
            lines = Path(self.admin_token_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read --cloud-admin-token-file: {exc}") from exc
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
        raise ConfigError("--cloud-admin-token-file holds no token")

    async def load(self, name: str, version: int, bundle: Path) -> str:
        """Install (if configured) and load; the outcome is text for the rollout history.

        Never raises: a cloud tier problem must not stop the edge rollout.
        """
        from offload.client import OffloadClient

        if self.repository is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._install, bundle
                )
            except EdgecloudError as exc:
                return f"failed: install into {self.repository}: {exc.reason}: {exc.message}"
        client: OffloadClient | None = None
        try:
            client = OffloadClient(self.target, tls=self.tls, admin_token=self._token())
            await client.start()
            await client.load_model(name, version)
        except EdgecloudError as exc:
            log.warning("cloud tier %s could not load %s:%d: %s", self.target, name, version, exc)
            return f"failed: {exc.reason}: {exc.message}"
        except Exception as exc:
            log.exception("cloud tier %s: load of %s:%d failed", self.target, name, version)
            return f"failed: {exc}"
        finally:
            if client is not None:
                await client.close()
        log.info("cloud tier %s loaded %s:%d", self.target, name, version)
        return f"loaded on {self.target}"
