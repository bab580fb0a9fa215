"""The virtual edge node's inference capacity: the scenario TOML's ``[edge]`` table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EdgeDevice(BaseModel):
    """The virtual edge node's inference capacity (scenario TOML ``[edge]``).

    Every virtual node shares this machine's fast CPU, where the built-in model costs
    ~10 us per window, so a load burst would never exceed "local capacity". The agents'
    emulated device (``--emulate-ms-per-batch/-item``) holds an inference worker for
    ``per_batch + per_item * batch`` ms without burning CPU, so the broker and the cloud
    tier sharing the machine are not starved, and each node gets a defined capacity.
    """

    model_config = ConfigDict(extra="forbid")

    emulate_ms_per_batch: float = Field(
        default=0.0, ge=0, description="extra service time per local batch (ms); 0: off"
    )
    emulate_ms_per_item: float = Field(
        default=0.0, ge=0, description="extra service time per window in a batch (ms); 0: off"
    )
    workers: int = Field(default=1, ge=1, description="local inference workers per agent")

    @property
    def emulated(self) -> bool:
        return self.emulate_ms_per_batch > 0 or self.emulate_ms_per_item > 0

    def capacity_per_s(self, batch: int) -> float | None:
        """Windows/s one agent computes locally at a steady ``batch`` size (None: not
        emulated, the real CPU is the limit)."""
        ms = self.emulate_ms_per_batch + self.emulate_ms_per_item * batch
        if not self.emulated or ms <= 0:
            return None
        return self.workers * batch * 1000.0 / ms

    def argv(self) -> list[str]:
        return [
            "--workers", str(self.workers),
            "--emulate-ms-per-batch", f"{self.emulate_ms_per_batch:g}",
            "--emulate-ms-per-item", f"{self.emulate_ms_per_item:g}",
        ]  # fmt: skip
