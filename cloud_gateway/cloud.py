"""Loading rolled-out versions into the cloud inference tier (V2 repository RPCs).

The offload server (like Triton) loads from its own model repository. When the gateway
shares that repository (``--cloud-repository``, a shared volume in Kubernetes) it first
installs the verified bundle there; then it asks the server to load the version.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from models.errors import EdgecloudError

log = logging.getLogger(__name__)


class CloudTier:
    """Puts a version into the cloud tier so offloaded requests find it."""

    def __init__(
        self,
        target: str,
        repository: Path | None = None,
        trusted_keys: dict[str, Any] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.target = target
        self.repository = repository
        self.trusted_keys = trusted_keys
        self.executor = executor

    def _install(self, bundle: Path) -> None:
        from models.repository import ModelRepository

        repo = ModelRepository(self.repository, trusted_keys=self.trusted_keys, check=False)
        repo.install(bundle)

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
        client = OffloadClient(self.target)
        try:
            await client.start()
            await client.load_model(name, version)
        except EdgecloudError as exc:
            log.warning("cloud tier %s could not load %s:%d: %s", self.target, name, version, exc)
            return f"failed: {exc.reason}: {exc.message}"
        except Exception as exc:
            log.exception("cloud tier %s: load of %s:%d failed", self.target, name, version)
            return f"failed: {exc}"
        finally:
            await client.close()
        log.info("cloud tier %s loaded %s:%d", self.target, name, version)
        return f"loaded on {self.target}"
