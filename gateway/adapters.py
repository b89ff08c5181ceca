"""LoRA adapters at the gateway: where an adapter's request goes, and loading it there first.

An adapter is published in the model mirror like a model, plus ``parent`` (its base model) and
``adapter_source`` (what the engine's load call takes as ``lora_path``). Its requests go to the
parent's workers; which one is decided here:

* **LoRA affinity** (``BERTH_GATEWAY_LORA_ROUTING=affinity``, the default): among the workers that
  already hold the adapter, the least loaded one whose load is within ``(1 + eps) × mean + 1`` of
  all the base's workers (the ``prefix`` policy's bounded-load rule, same ``eps``), so a hot adapter
  spills onto a second worker instead of queueing behind one. "Holds" is the gateway's own record
  of loads (Redis ``lora:<worker id>``, shared by every gateway replica) together with the
  adapters the engine reports running or waiting in ``vllm:lora_requests_info`` (scraped with the
  load gauges). No holder within the bound: the least loaded worker, where the adapter is loaded.
* ``least_load``: the least loaded worker, whatever it holds (the baseline the benchmark compares).

Loading is ``POST /v1/load_lora_adapter`` ``{"lora_name": <served name>, "lora_path": <source>}``
on the chosen worker with its key, once per worker and adapter at a time (concurrent requests for
the same pair wait on the one load), within ``BERTH_GATEWAY_LORA_LOAD_TIMEOUT``. To a CPU engine
(the route entry's ``engine``) the body also carries ``expected_manifest``, the adapter's manifest
from the mirror, and the engine refuses files that do not match it; vLLM gets vLLM's body only.
"Already loaded"
(another gateway got there first) counts as loaded. A failed load is the client's clear OpenAI
error, never a 500. Engines evict adapters themselves (LRU over ``--max-cpu-loras``): a 404 for the
adapter from a worker the record says holds it means it was evicted; the record is corrected and
the request goes through the choice again, which loads it anew.

When an adapter's mirror entry disappears (deleted), each worker that holds it is told to unload
it; the Redis record is the claim, so among several gateways only the one whose ``HDEL`` removed
the field sends the unload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import orjson

from gateway import metrics
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.routing import ModelInfo, Router, Worker

logger = logging.getLogger("berth.gateway.adapters")

RECORD_TTL_MS = 24 * 3600 * 1000  # a worker gone for a day leaves no record behind


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Adapters:
    def __init__(self, router: Router):
        self.router = router
        self.redis = router.redis
        self.settings = router.settings
        self.names = router.names
        # worker id -> (read at, adapters the record says it holds); this gateway's writes update it
        self._held: dict[str, tuple[float, set[str]]] = {}
        self._flights: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._background: set[asyncio.Task] = set()
        # (worker id, adapter) -> when an engine said it no longer holds it: a scrape from before
        # that must not bring it back
        self._evicted: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------------ who holds what

    async def held(self, workers: Iterable[Worker]) -> dict[str, set[str]]:
        """Adapters each worker holds: the shared record (≤ route_cache_seconds old) and the
        adapters its engine last reported running or waiting."""
        now = time.monotonic()
        ttl = self.settings.route_cache_seconds
        workers = list(workers)
        stale = [w.worker_id for w in workers if now - self._held.get(w.worker_id, (-1e9, set()))[0] >= ttl]
        if stale:
            pipe = self.redis.pipeline(transaction=False)
            for worker_id in stale:
                pipe.hkeys(self.names.lora_held(worker_id))
            for worker_id, keys in zip(stale, await pipe.execute(), strict=True):
                self._held[worker_id] = (now, {_text(k) for k in keys})
        result = {}
        for worker in workers:
            names = set(self._held.get(worker.worker_id, (0.0, set()))[1])
            engine = self.router.engine_load.get(worker.worker_id) or {}
            names.update(
                n
                for n in engine.get("loras") or ()
                if now - self._evicted.get((worker.worker_id, n), -1e9) > 5
            )
            result[worker.worker_id] = names
        return result

    async def _record(self, worker: Worker, info: ModelInfo) -> None:
        key = self.names.lora_held(worker.worker_id)
        value = orjson.dumps({"parent": info.parent, "at": int(time.time() * 1000)})
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, info.served_name, value)
        pipe.pexpire(key, RECORD_TTL_MS)
        await pipe.execute()
        self._held.setdefault(worker.worker_id, (time.monotonic(), set()))[1].add(info.served_name)

    async def _forget(self, worker_id: str, served_name: str) -> bool:
        self._held.get(worker_id, (0.0, set()))[1].discard(served_name)
        return bool(await self.redis.hdel(self.names.lora_held(worker_id), served_name))

    # ------------------------------------------------------------------ placing a request

    async def place(self, info: ModelInfo, workers: list[Worker], exclude: AbstractSet[str]) -> Worker:
        """The worker for one request to adapter ``info``, with the adapter loaded on it."""
        candidates = [w for w in workers if w.worker_id not in exclude] or workers
        router = self.router
        loads = {w.worker_id: router.load(w) for w in candidates}
        held: dict[str, set[str]] = {}
        if self.settings.lora_routing == "affinity":
            held = await self.held(candidates)
            holder = affinity_choice(
                info.served_name, candidates, loads, held, self.settings.bounded_load_eps
            )
            if holder is not None:
                metrics.LORA_AFFINITY.labels(info.name, "hit").inc()
                return holder
            metrics.LORA_AFFINITY.labels(info.name, "miss").inc()
        chosen = router.choose(candidates, None)
        if chosen.worker_id not in held:
            held.update(await self.held([chosen]))
        if info.served_name not in held[chosen.worker_id]:
            await self.ensure_loaded(info, chosen)
        return chosen

    async def ensure_loaded(self, info: ModelInfo, worker: Worker) -> None:
        """Load ``info`` on ``worker``; one load per worker and adapter at a time."""
        key = (worker.worker_id, info.served_name)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._load(info, worker))
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        await asyncio.shield(flight)

    async def _load(self, info: ModelInfo, worker: Worker) -> None:
        payload: dict[str, Any] = {"lora_name": info.served_name, "lora_path": info.adapter_source}
        if worker.engine == "cpu" and info.adapter_manifest:
            payload["expected_manifest"] = orjson.Fragment(info.adapter_manifest)
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if worker.api_key:
            headers["Authorization"] = f"Bearer {worker.api_key}"
        started = time.perf_counter()
        timeout = self.settings.lora_load_timeout
        try:
            async with asyncio.timeout(timeout):
                response = await self.router.upstream.send(
                    "POST", worker.url + "/v1/load_lora_adapter", headers, body
                )
                try:
                    status, answer = response.status, await response.read()
                finally:
                    await response.close()
        except TimeoutError:
            metrics.LORA_LOAD_FAILURES.labels(info.name).inc()
            logger.warning(
                "loading adapter %s on %s timed out after %ss", info.name, worker.worker_id, timeout
            )
            raise GatewayError(
                504,
                f"Loading the adapter `{info.name}` onto a model worker took longer than {timeout:g} seconds. "
                "Retry the request in a little while.",
                type="server_error",
                code="adapter_load_timeout",
            ) from None
        except Exception as exc:
            metrics.LORA_LOAD_FAILURES.labels(info.name).inc()
            logger.warning("loading adapter %s on %s failed: %s", info.name, worker.worker_id, exc)
            raise _load_failed(info) from exc
        already = status == 400 and b"already been loaded" in answer
        if status != 200 and not already:
            metrics.LORA_LOAD_FAILURES.labels(info.name).inc()
            logger.warning(
                "loading adapter %s from %s on %s failed: HTTP %s %s",
                info.name,
                info.adapter_source,
                worker.worker_id,
                status,
                answer[:500].decode("utf-8", "replace"),
            )
            raise _load_failed(info)
        if not already:
            metrics.LORA_LOADS.labels(info.name).inc()
            metrics.LORA_LOAD_SECONDS.observe(time.perf_counter() - started)
            logger.info("loaded adapter %s on %s", info.name, worker.worker_id)
        await self._record(worker, info)

    async def evicted(self, info: ModelInfo, worker: Worker, workers: list[Worker]) -> None:
        """The worker answered 404 for the adapter: it evicted it (its LRU) or restarted.

        The record of the base's other workers is dropped too: engines evict on their own, so a
        record that was wrong here is likely stale there, and trusting it would send the retry
        to another 404. The retry then loads the adapter where it goes (at worst once too often)."""
        now = time.monotonic()
        for each in {w.worker_id for w in workers} | {worker.worker_id}:
            await self._forget(each, info.served_name)
            self._evicted[(each, info.served_name)] = now
        if len(self._evicted) > 10_000:
            self._evicted.clear()
        metrics.LORA_EVICTIONS.labels(info.name).inc()

    # ------------------------------------------------------------------ deleted adapters

    def model_changed(self, name: str) -> None:
        """From the ``invalidate`` channel: if ``name`` was an adapter and is gone, unload it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, no gateway serving: nothing was loaded through this object
        task = asyncio.ensure_future(self._unload_if_gone(name))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unload_if_gone(self, served_name: str) -> None:
        try:
            if await self.redis.exists(self.names.model(served_name)):
                return
            async for raw in self.redis.scan_iter(match=self.names.lora_held_pattern(), count=500):
                key = _text(raw)
                record = await self.redis.hget(key, served_name)
                if record is None:
                    continue
                worker_id = self.names.lora_worker_of(key)
                if not await self._forget(worker_id, served_name):
                    continue  # another gateway claimed this unload
                try:
                    parent = orjson.loads(record).get("parent") or ""
                except orjson.JSONDecodeError:
                    parent = ""
                await self._unload(served_name, worker_id, parent)
        except Exception:
            logger.warning("could not unload deleted adapter %s", served_name, exc_info=True)

    async def _unload(self, served_name: str, worker_id: str, parent: str) -> None:
        worker = next(
            (w for w in await self.router.workers(parent, fresh=True) if w.worker_id == worker_id), None
        )
        if worker is None:
            return  # the worker is gone, and its adapters with it
        headers = {"Content-Type": "application/json"}
        if worker.api_key:
            headers["Authorization"] = f"Bearer {worker.api_key}"
        try:
            async with asyncio.timeout(self.settings.lora_load_timeout):
                response = await self.router.upstream.send(
                    "POST",
                    worker.url + "/v1/unload_lora_adapter",
                    headers,
                    orjson.dumps({"lora_name": served_name}),
                )
                status = response.status
                await response.close()
        except Exception as exc:
            logger.warning("unloading adapter %s from %s failed: %s", served_name, worker_id, exc)
            return
        if status in (200, 404):  # 404: the engine had evicted it already
            metrics.LORA_UNLOADS.labels(served_name).inc()
            logger.info("unloaded deleted adapter %s from %s", served_name, worker_id)


def affinity_choice(
    adapter: str, candidates: list[Worker], loads: dict[str, float], held: dict[str, set[str]], eps: float
) -> Worker | None:
    """The least loaded worker holding ``adapter`` whose load is within ``(1 + eps) × mean + 1``
    of all candidates; None when no holder is (the request then goes where the load is least)."""
    bound = (1 + eps) * (sum(loads.values()) / len(loads)) + 1
    holders = [w for w in candidates if adapter in held.get(w.worker_id, ()) and loads[w.worker_id] <= bound]
    return min(holders, key=lambda w: loads[w.worker_id]) if holders else None


def _load_failed(info: ModelInfo) -> GatewayError:
    return GatewayError(
        502,
        f"The adapter `{info.name}` could not be loaded onto a model worker. Its files may be missing "
        "or not a LoRA adapter for its base model; the operator has the details.",
        type="server_error",
        code="adapter_load_failed",
    )
