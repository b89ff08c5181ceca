"""The engines' load gauges, read from their Prometheus ``/metrics`` (vLLM's names).

The gateway's scraper and the autoscaler's direct probe read the same three gauges; a gauge
with several label sets (one per served model) is summed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
LORA_INFO = "vllm:lora_requests_info"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class EngineLoad:
    waiting: float = 0.0
    running: float = 0.0
    kv: float = 0.0  # KV-cache use, 0..1

    def as_dict(self) -> dict[str, float]:
        return {"waiting": self.waiting, "running": self.running, "kv": self.kv}


def _sample(line: str) -> tuple[str, float] | None:
    """``name{labels} value [timestamp]`` -> (name, value); None for anything else."""
    if "{" in line:
        name, _, rest = line.partition("{")
        _, closed, rest = rest.rpartition("}")
        if not closed:
            return None
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return (name.strip(), value) if math.isfinite(value) else None


def parse(text: str) -> EngineLoad:
    """Sum the gauges over their label sets; malformed lines are skipped."""
    totals = {WAITING: 0.0, RUNNING: 0.0, KV_CACHE: 0.0}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("vllm:"):
            continue
        sample = _sample(line)
        if sample is not None and sample[0] in totals:
            totals[sample[0]] += sample[1]
    return EngineLoad(waiting=totals[WAITING], running=totals[RUNNING], kv=totals[KV_CACHE])


def lora_adapters(text: str) -> list[str]:
    """The adapters ``vllm:lora_requests_info`` reports running or waiting, from its newest sample.

    vLLM sets the gauge to the current time under labels naming the adapters, and a label set it
    used before stays exported with its older time: the sample with the largest value is now."""
    newest, adapters = -1.0, []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(LORA_INFO + "{"):
            continue
        sample = _sample(line)
        if sample is None or sample[0] != LORA_INFO or sample[1] <= newest:
            continue
        labels = dict(_LABEL.findall(line[len(LORA_INFO) + 1 : line.rfind("}")]))
        names = ",".join(labels.get(k, "") for k in ("running_lora_adapters", "waiting_lora_adapters"))
        newest, adapters = sample[1], sorted({n for n in names.split(",") if n})
    return adapters
