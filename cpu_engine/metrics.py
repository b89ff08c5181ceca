"""The engine's Prometheus metrics, under vLLM's V1 names and labels.

The autoscaler, the router and the tests read an engine's load and token counts the same way
whatever the engine is, so this engine exposes the subset of vLLM's series they read, with the
same names, help texts, labels and histogram buckets.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

# vLLM's buckets for time to first token and end-to-end latency.
LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class Metrics:
    """The subset of vLLM's V1 metrics a router or autoscaler reads, under the same names."""

    def __init__(self, served_name: str, backend: Any):
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.labels = {"model_name": served_name, "engine": "0"}
        running = Gauge(
            "vllm:num_requests_running",
            "Requests in model execution batches.",
            labels,
            registry=self.registry,
        )
        running.labels(**self.labels).set_function(lambda: backend.running)
        waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=self.registry
        )
        waiting.labels(**self.labels).set_function(lambda: backend.waiting)
        kv = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            labels,
            registry=self.registry,
        )
        kv.labels(**self.labels).set_function(backend.kv_cache_usage)
        prefix_cache = getattr(backend, "prefix_cache", None)
        if prefix_cache is not None:
            self.registry.register(PrefixCacheCollector(prefix_cache, self.labels))
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self.registry
        ).labels(**self.labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=self.registry
        ).labels(**self.labels)
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        for reason in ("stop", "length", "abort", "error"):
            self.success.labels(**self.labels, finished_reason=reason)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**self.labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**self.labels)

    def finished(self, reason: str, *, prompt_tokens: int, completion_tokens: int, started: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.success.labels(**self.labels, finished_reason=reason).inc()
        self.e2e.observe(time.monotonic() - started)


class PrefixCacheCollector:
    """``vllm:prefix_cache_queries_total`` and ``vllm:prefix_cache_hits_total``, in tokens, as vLLM
    counts them: a router or a test reads the hit rate, and cache isolation, from them."""

    def __init__(self, counts: Any, labels: dict[str, str]):
        self.counts, self.labels = counts, labels

    def collect(self) -> list[CounterMetricFamily]:
        names = list(self.labels)
        values = [self.labels[name] for name in names]
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels=names,
        )
        queries.add_metric(values, self.counts.queries)
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", labels=names
        )
        hits.add_metric(values, self.counts.hits)
        return [queries, hits]
