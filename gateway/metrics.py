"""Prometheus metrics of the gateway, labelled by model and status.

With ``--workers`` > 1, ``manage.py gateway`` sets ``PROMETHEUS_MULTIPROC_DIR`` so ``/metrics``
aggregates every worker process (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "berth_gateway_requests_total", "Requests by model, endpoint and status", ["model", "endpoint", "status"]
)
TOKENS = Counter("berth_gateway_tokens_total", "Tokens metered, by model and kind", ["model", "kind"])
LATENCY = Histogram(
    "berth_gateway_request_seconds", "Total request latency", ["model", "status"], buckets=_LATENCY_BUCKETS
)
TTFT = Histogram(
    "berth_gateway_ttft_seconds", "Time to first token (streams)", ["model"], buckets=_LATENCY_BUCKETS
)
QUEUE_WAIT = Histogram(
    "berth_gateway_queue_wait_seconds",
    "Time held waiting for a ready worker",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
QUOTA_REFUSALS = Counter("berth_gateway_quota_refusals_total", "429s by model and code", ["model", "code"])
UPSTREAM_RETRIES = Counter("berth_gateway_upstream_retries_total", "Retries on another worker", ["model"])


_CHILDREN: dict[tuple, Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, cached: ``labels()`` takes a lock and checks its arguments on
    every call (several µs a request on the hot path), and a labelled child never changes."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found


def render() -> tuple[bytes, bytes]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
    return generate_latest(), CONTENT_TYPE_LATEST.encode()


# LoRA adapters (gateway.adapters)
LORA_LOADS = Counter("berth_gateway_lora_loads_total", "Adapter loads onto workers, by adapter", ["model"])
LORA_LOAD_FAILURES = Counter(
    "berth_gateway_lora_load_failures_total", "Adapter loads that failed or timed out", ["model"]
)
LORA_UNLOADS = Counter("berth_gateway_lora_unloads_total", "Adapters unloaded after deletion", ["model"])
LORA_EVICTIONS = Counter(
    "berth_gateway_lora_evictions_total", "Adapters found evicted by an engine (404), reloaded", ["model"]
)
LORA_AFFINITY = Counter(
    "berth_gateway_lora_affinity_total",
    "Adapter requests that found a worker holding the adapter (hit) or not (miss)",
    ["model", "result"],
)
LORA_LOAD_SECONDS = Histogram(
    "berth_gateway_lora_load_seconds", "Time to load an adapter onto a worker", buckets=_LATENCY_BUCKETS
)

# The admission queue (gateway.admission). "tier" is the band of service; tenants are not a
# label (unbounded): the staff dashboard's Queues panel shows them from Redis.
ADMISSION_DEPTH = Gauge(
    "berth_gateway_admission_waiting",
    "Requests waiting in this gateway's admission queue, by model and tier",
    ["model", "tier"],
    multiprocess_mode="livesum",
)
ADMISSION_WAIT = Histogram(
    "berth_gateway_admission_wait_seconds",
    "Time requests waited in the admission queue before dispatch",
    ["model", "tier"],
    buckets=_LATENCY_BUCKETS,
)
ADMISSION_DISPATCHES = Counter(
    "berth_gateway_admission_dispatches_total",
    "Requests admitted, by model, tier and path (held: a slot this gateway held; queued: via Redis)",
    ["model", "tier", "path"],
)
ADMISSION_REFUSALS = Counter(
    "berth_gateway_admission_refusals_total",
    "Requests that left the admission queue unserved (full, wait, disconnect)",
    ["model", "tier", "reason"],
)
