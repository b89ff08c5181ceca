"""What accelerators this host has: NVML, else torch.cuda, else CPU slots only.

Each step is guarded: a missing package (ImportError) or any driver error falls through to the
next. ``nvidia-ml-py`` (module ``pynvml``) also gives live memory and utilization for heartbeats;
torch gives only totals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization: int = 0


@dataclass(frozen=True)
class Inventory:
    source: str  # "nvml" | "torch" | "cpu"
    gpus: tuple[GpuInfo, ...]
    cpu_slots: int


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_nvml() -> list[GpuInfo] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError and friends: no driver, no device
        logger.info("NVML unavailable", exc_info=True)
        return None
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:
                utilization = 0
            found.append(
                GpuInfo(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=int(memory.total // 2**20),
                    memory_used_mb=int(memory.used // 2**20),
                    utilization=utilization,
                )
            )
        return found
    except Exception:
        logger.warning("NVML query failed; trying torch", exc_info=True)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            logger.debug("nvmlShutdown failed", exc_info=True)


def _from_torch() -> list[GpuInfo] | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(
                GpuInfo(
                    index=index,
                    uuid=str(getattr(props, "uuid", "") or ""),
                    name=str(props.name),
                    memory_total_mb=int(props.total_memory // 2**20),
                )
            )
        return found
    except Exception:
        logger.warning("torch.cuda query failed; using CPU slots", exc_info=True)
        return None


def discover(*, cpu_slots: int) -> Inventory:
    """GPUs on this host by the first source that works; CPU slots are always offered."""
    for source, probe in (("nvml", _from_nvml), ("torch", _from_torch)):
        gpus = probe()
        if gpus:
            return Inventory(source=source, gpus=tuple(gpus), cpu_slots=cpu_slots)
    return Inventory(source="cpu", gpus=(), cpu_slots=cpu_slots)
