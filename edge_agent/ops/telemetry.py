"""Node telemetry: CPU and memory (psutil), GPU and temperature (jetson-stats or sysfs).

``node_pressure`` (0..1) summarises saturation for the routing policy: a busy CPU, a busy
GPU or a hot SoC all push work towards the cloud tier.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

_THERMAL_ROOT = Path("/sys/class/thermal")
_HOT_C = 85.0  # Jetson modules start throttling in the high 80s
_COOL_C = 60.0


def _read_sysfs_temperature(root: Path = _THERMAL_ROOT) -> float | None:
    """Hottest thermal zone in degrees C, or None when the kernel exposes none."""
    best: float | None = None
    for zone in root.glob("thermal_zone*/temp"):
        with contextlib.suppress(OSError, ValueError):
            t = int(zone.read_text().strip()) / 1000.0
            best = t if best is None else max(best, t)
    return best


def _read_sysfs_gpu_load() -> float | None:
    # Jetson without jetson-stats: the GPU devfreq load is in per-mille.
    for path in Path("/sys/devices").glob("platform/*gpu*/load"):
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip()) / 10.0
    return None


class Telemetry:
    """Samples the node on demand (call :meth:`sample` about once a second)."""

    def __init__(self, use_jetson: bool = True) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)
        self._jtop: Any = None
        if use_jetson:
            self._jtop = self._open_jtop()
        self.cpu_percent = 0.0
        self.process_cpu_percent = 0.0
        self.mem_percent = 0.0
        self.rss_mb = 0.0
        self.gpu_percent: float | None = None
        self.temperature_c: float | None = None

    @staticmethod
    def _open_jtop() -> Any:
        try:
            from jtop import jtop  # optional extra: pip install 'edgecloud[jetson]'
        except ImportError:
            return None
        try:
            handle = jtop()
            handle.start()
            return handle
        except Exception as exc:  # jtop service not running: fall back to sysfs
            log.info("jetson-stats present but unusable (%s); using sysfs", exc)
            return None

    def sample(self) -> dict[str, float | None]:
        self.cpu_percent = psutil.cpu_percent(None)
        self.process_cpu_percent = self._proc.cpu_percent(None)
        self.mem_percent = psutil.virtual_memory().percent
        self.rss_mb = self._proc.memory_info().rss / 2**20
        if self._jtop is not None and self._jtop.ok():
            stats = self._jtop.stats
            self.gpu_percent = float(stats.get("GPU", 0.0))
            temps = [
                v for k, v in stats.items() if k.startswith("Temp") and isinstance(v, int | float)
            ]
            self.temperature_c = max(temps) if temps else None
        else:
            self.gpu_percent = _read_sysfs_gpu_load()
            self.temperature_c = _read_sysfs_temperature()
        return self.snapshot()

    def snapshot(self) -> dict[str, float | None]:
        return {
            "cpu_percent": round(self.cpu_percent, 1),
            "process_cpu_percent": round(self.process_cpu_percent, 1),
            "mem_percent": round(self.mem_percent, 1),
            "rss_mb": round(self.rss_mb, 1),
            "gpu_percent": self.gpu_percent,
            "temperature_c": self.temperature_c,
        }

    @property
    def node_pressure(self) -> float:
        """0 (idle, cool) .. 1 (saturated or throttling)."""
        p = max(0.0, (self.cpu_percent - 50.0) / 50.0)
        if self.gpu_percent is not None:
            p = max(p, (self.gpu_percent - 50.0) / 50.0)
        if self.temperature_c is not None:
            p = max(p, (self.temperature_c - _COOL_C) / (_HOT_C - _COOL_C))
        return min(1.0, max(0.0, p))

    def close(self) -> None:
        if self._jtop is not None:
            with contextlib.suppress(Exception):
                self._jtop.close()
