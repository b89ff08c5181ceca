"""Where requests go: the model registry and routing table read from Redis, and the worker choice.

The mirrors' layout (``model:<name>``, ``models``, ``route:<name>``, ``engine_load``,
``demand:<name>``) is the contract's: see ``contract``. One gateway at a time (elected through a
``SET NX PX`` lock) scrapes every routed engine's ``/metrics`` about once a second into
``engine_load``; every gateway reads it back. A request that finds no ready worker sets
``demand:<name>`` (at most once a second per gateway and model), which the autoscaler reads.

Worker choice (``BERTH_GATEWAY_ROUTING``): ``least_load`` — the lowest load, where load = this
gateway's outstanding requests to the worker + the engine's waiting requests + 4 × its KV-cache
use; ``prefix`` — rendezvous hashing of the prompt's first ``prefix_chars`` characters ranks the
workers, and the first whose load is within ``(1 + eps) × mean + 1`` wins (bounded load, so a hot
prefix spills over instead of piling up); ``round_robin`` — for comparison. A LoRA adapter's
requests go to its base model's workers, chosen by ``gateway.adapters`` (LoRA affinity).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import orjson

from contract import engine_metrics, spend
from contract.invalidation import Kind
from contract.redis_names import RedisNames
from gateway.adapters import Adapters
from gateway.cache import TtlCache

logger = logging.getLogger("berth.gateway.routing")

KV_WEIGHT = 4.0


@dataclass(frozen=True)
class Worker:
    worker_id: str
    url: str
    api_key: str
    engine: str = ""  # the deployment's engine ("vllm" | "cpu"); empty from an older route entry


@dataclass(frozen=True)
class ModelInfo:
    name: str
    served_name: str
    task: str
    visibility: str
    tenants: frozenset[str]
    created: int
    owned_by: str
    context_length: int | None = None
    price_input_micros: int = 0
    price_output_micros: int = 0
    price_cached_input_micros: int | None = None  # None: cached input costs the input price
    # Percent of those prices per service tier (gateway.tiers); None: contract.tiers' default.
    # The price row's ``price_percent_*`` fields as mirrored (contract.spend.tier_percent reads them).
    price_percents: dict[str, str] = field(default_factory=dict)
    # LoRA adapters only (gateway.adapters): the base model whose workers serve it, and what the
    # engine's load call takes as lora_path.
    parent: str | None = None
    adapter_id: str = ""
    adapter_source: str = ""
    adapter_revision: str = ""
    adapter_rank: int | None = None
    manifest_digest: str = ""
    adapter_manifest: str = ""  # canonical JSON of an adapter's manifest, for the CPU engine's check

    @property
    def route_name(self) -> str:
        """The model whose workers serve this one: the base for an adapter."""
        return self.parent or self.name

    def visible_to(self, tenant_id: str) -> bool:
        return self.visibility == "public" or tenant_id in self.tenants


def _decode(raw: dict) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


def _positive_int(value: str | None) -> int | None:
    """A mirrored count or price; a missing or malformed value reads as absent, not as a crash."""
    try:
        number = int(value) if value else None
    except ValueError:
        logger.warning("ignoring malformed number %r in the model mirror", value)
        return None
    return number if number is not None and number > 0 else None


def _price_or_none(value: str | None) -> int | None:
    """A mirrored price that may be 0 (free): None only when absent or malformed."""
    if value in (None, ""):
        return None
    return 0 if value == "0" else _positive_int(value)


class Router:
    def __init__(self, redis, settings, upstream=None):
        self.redis = redis
        self.settings = settings
        self.upstream = upstream
        self.names = RedisNames(settings.redis_prefix)
        self.instance = f"{os.uname().nodename}:{os.getpid()}"
        self.outstanding: dict[str, int] = {}
        self.engine_load: dict[str, dict] = {}
        self._routes: TtlCache[str, list[Worker]] = TtlCache(settings.route_cache_seconds, max_entries=10_000)
        self._models: TtlCache[str, ModelInfo | None] = TtlCache(
            settings.route_cache_seconds, max_entries=10_000
        )
        self._model_names: tuple[float, list[str]] = (0.0, [])
        self._demand_sent: dict[str, float] = {}
        self._rr = itertools.count()
        self.adapters = Adapters(self)

    # ------------------------------------------------------------------ registry reads

    async def model(self, name: str) -> ModelInfo | None:
        return await self._models.get(name, lambda: self._read_model(name))

    async def _read_model(self, name: str) -> ModelInfo | None:
        raw = _decode(await self.redis.hgetall(self.names.model(name)))
        if not raw:
            return None
        return ModelInfo(
            name=name,
            served_name=raw.get("served_name") or name,
            task=raw.get("task", "chat"),
            visibility=raw.get("visibility", "public"),
            tenants=frozenset(orjson.loads(raw.get("tenants") or "[]")),
            created=int(float(raw.get("created") or 0)),
            owned_by=raw.get("owned_by") or "berth",
            context_length=_positive_int(raw.get("context_length")),
            price_input_micros=_positive_int(raw.get("price_input_micros")) or 0,
            price_output_micros=_positive_int(raw.get("price_output_micros")) or 0,
            price_cached_input_micros=_price_or_none(raw.get("price_cached_input_micros")),
            price_percents={f: raw[f] for f in spend.PERCENT_FIELDS.values() if raw.get(f)},
            parent=raw.get("parent") or None,
            adapter_id=raw.get("adapter_id", ""),
            adapter_source=raw.get("adapter_source", ""),
            adapter_revision=raw.get("adapter_revision", ""),
            adapter_rank=_positive_int(raw.get("adapter_rank")),
            manifest_digest=raw.get("manifest_digest") or "",
            adapter_manifest=raw.get("adapter_manifest") or "",
        )

    async def visible_models(self, tenant_id: str, allowed: frozenset[str]) -> list[ModelInfo]:
        """The models a tenant (and key, if it lists models) may use: ``GET /v1/models``."""
        now = time.monotonic()
        if now - self._model_names[0] >= self.settings.route_cache_seconds:
            names = await self.redis.smembers(self.names.models())
            self._model_names = (now, sorted(n.decode() if isinstance(n, bytes) else n for n in names))
        result = []
        for name in self._model_names[1]:
            if allowed and name not in allowed:
                continue
            info = await self.model(name)
            if info is not None and info.visible_to(tenant_id):
                result.append(info)
        return result

    async def workers(self, model: str, *, fresh: bool = False) -> list[Worker]:
        return await self._routes.get(model, lambda: self._read_routes(model), fresh=fresh)

    async def _read_routes(self, model: str) -> list[Worker]:
        raw = _decode(await self.redis.hgetall(self.names.route(model)))
        workers = []
        for worker_id, value in sorted(raw.items()):
            try:
                data = orjson.loads(value)
                workers.append(
                    Worker(
                        worker_id,
                        data["url"].rstrip("/"),
                        data.get("api_key") or "",
                        str(data.get("engine") or ""),
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                logger.warning("ignoring malformed route entry %s for %s", worker_id, model)
        return workers

    async def signal_demand(self, model: str) -> None:
        now = time.monotonic()
        if now - self._demand_sent.get(model, 0.0) < 1.0:
            return
        self._demand_sent[model] = now
        await self.redis.set(self.names.demand(model), int(time.time()), ex=60)

    async def wait_for_workers(self, model: str, wait_seconds: float) -> list[Worker]:
        """Cold start: signal demand and poll the routing table until a worker is ready."""
        deadline = time.monotonic() + wait_seconds
        while True:
            await self.signal_demand(model)
            workers = await self.workers(model, fresh=True)
            if workers or time.monotonic() >= deadline:
                return workers
            await asyncio.sleep(min(0.25, max(0.01, deadline - time.monotonic())))

    def invalidate(self, kind: str, name: str) -> None:
        """Drop a cached route table or model entry (from the ``invalidate`` channel)."""
        if kind == Kind.ROUTE:
            self._routes.pop(name)
        elif kind == Kind.MODEL:
            self._models.pop(name)
            self._model_names = (0.0, [])
            self.adapters.model_changed(name)  # a deleted adapter is unloaded from its workers

    # ------------------------------------------------------------------ choice

    def load(self, worker: Worker) -> float:
        engine = self.engine_load.get(worker.worker_id)
        load = float(self.outstanding.get(worker.worker_id, 0))
        if engine:
            load += float(engine.get("waiting", 0)) + KV_WEIGHT * float(engine.get("kv", 0))
        return load

    def choose(
        self, workers: list[Worker], prefix: str | None, exclude: AbstractSet[str] = frozenset()
    ) -> Worker:
        candidates = [w for w in workers if w.worker_id not in exclude] or workers
        if len(candidates) == 1:
            return candidates[0]
        policy = self.settings.routing
        if policy == "round_robin":
            return candidates[next(self._rr) % len(candidates)]
        loads = {w.worker_id: self.load(w) for w in candidates}
        if policy == "prefix" and prefix:
            bound = (1 + self.settings.bounded_load_eps) * (sum(loads.values()) / len(loads)) + 1
            key = prefix.encode()
            ranked = sorted(
                candidates,
                key=lambda w: hashlib.blake2b(key + w.worker_id.encode(), digest_size=8).digest(),
            )
            for worker in ranked:
                if loads[worker.worker_id] <= bound:
                    return worker
        return min(candidates, key=lambda w: (loads[w.worker_id], next(self._rr) % 1_000_003))

    def acquire(self, worker: Worker) -> None:
        self.outstanding[worker.worker_id] = self.outstanding.get(worker.worker_id, 0) + 1

    def release(self, worker: Worker) -> None:
        left = self.outstanding.get(worker.worker_id, 1) - 1
        if left <= 0:
            self.outstanding.pop(worker.worker_id, None)
        else:
            self.outstanding[worker.worker_id] = left

    # ------------------------------------------------------------------ engine metrics

    async def refresh_loads(self) -> None:
        raw = _decode(await self.redis.hgetall(self.names.engine_load()))
        loads = {}
        for worker_id, value in raw.items():
            try:
                loads[worker_id] = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
        self.engine_load = loads

    async def scrape_once(self) -> bool:
        """If this gateway holds the scraper lock, scrape every routed worker's ``/metrics``."""
        lock = self.names.engine_scraper_lock()
        ttl_ms = int(self.settings.scrape_interval * 3000)
        holder = await self.redis.get(lock)
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder == self.instance:
            await self.redis.pexpire(lock, ttl_ms)
        elif not await self.redis.set(lock, self.instance, nx=True, px=ttl_ms):
            return False
        workers: dict[str, Worker] = {}
        async for name in self.redis.scan_iter(match=self.names.route_pattern(), count=500):
            model = self.names.route_model_of(name.decode() if isinstance(name, bytes) else name)
            for worker in await self._read_routes(model):
                workers[worker.worker_id] = worker
        if not workers or self.upstream is None:
            return True

        async def one(worker: Worker):
            try:
                text = await self.upstream.get_text(f"{worker.url}/metrics", worker.api_key, limit_s=2.0)
            except Exception:  # a worker that does not answer simply has no fresh load figure
                return None
            data: dict = {**engine_metrics.parse(text).as_dict(), "at": time.time()}
            loras = engine_metrics.lora_adapters(text)
            if loras:
                data["loras"] = loras
            return worker.worker_id, data

        results = await asyncio.gather(*(one(w) for w in workers.values()))
        mapping = {wid: orjson.dumps(data) for wid, data in filter(None, results)}
        if mapping:
            pipe = self.redis.pipeline(transaction=False)
            key = self.names.engine_load()
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, ttl_ms * 2)
            await pipe.execute()
        return True

    async def run_background(self) -> None:
        """Scrape (when elected) and read the shared loads, about once per ``scrape_interval``."""
        while True:
            try:
                await self.scrape_once()
                await self.refresh_loads()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("engine load refresh failed", exc_info=True)
            await asyncio.sleep(self.settings.scrape_interval)
