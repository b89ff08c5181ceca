"""The admission queues as the gateways share them in Redis, for the staff dashboard's Queues page.

The gateways keep each model's queue in Redis (``gateway.admission``; layout in ``contract``):
slots held per gateway, waiting entries (``<gateway>|<band index>|<tenant>|<cost>|<enqueued
ms>``), one sorted set per tier. This module reads that state back: per model and tier the
depth and the oldest wait, per tenant the same plus the tokens waiting, and the slots in use.
Read-only and cross-tenant: staff views only.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import redis as redis_lib

from berth.redis import get_redis, names
from contract import tiers
from tenants.models import Tenant

logger = logging.getLogger("berth.staff")

# The queue's bands of service, in order (the gateway's script numbers them 1..4).
TIERS = tuple(sorted(tiers.RANK, key=tiers.RANK.__getitem__))


@dataclass
class Waiting:
    depth: int = 0
    oldest_ms: int = 0  # how long the oldest entry has waited
    tokens: int = 0  # their token reservations (what fair queuing weighs)

    def add(self, waited_ms: int, cost: int) -> None:
        self.depth += 1
        self.oldest_ms = max(self.oldest_ms, waited_ms)
        self.tokens += cost

    @property
    def oldest_s(self) -> float:
        return round(self.oldest_ms / 1000, 1)


@dataclass
class ModelQueue:
    model: str
    slots_in_use: int = 0
    gateways: int = 0
    tiers: dict[str, Waiting] = field(default_factory=lambda: {t: Waiting() for t in TIERS})
    tenants: dict[tuple[str, str], Waiting] = field(default_factory=dict)  # (tier, tenant id)

    @property
    def depth(self) -> int:
        return sum(w.depth for w in self.tiers.values())


def snapshot(now_ms: int | None = None) -> list[ModelQueue]:
    """Every model a gateway has admitted requests for in the last hour; [] when Redis is down."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    redis = get_redis()
    n = names()
    result = []
    try:
        models = sorted(
            n.admission_model_of(key) for key in redis.scan_iter(match=n.admission_alive_pattern(), count=500)
        )
        for model in models:
            pipe = redis.pipeline(transaction=False)
            pipe.hgetall(n.admission_slots(model))
            pipe.zrangebyscore(n.admission_alive(model), now_ms, "+inf")
            pipe.hgetall(n.admission_entries(model))
            slots, alive, entries = pipe.execute()
            queue = ModelQueue(model, gateways=len(alive))
            alive_set = set(alive)
            queue.slots_in_use = sum(int(v) for gw, v in slots.items() if gw in alive_set)
            for value in entries.values():
                parsed = _entry(value)
                if parsed is None:
                    continue
                tier, tenant, cost, enqueued = parsed
                waited = max(0, now_ms - enqueued)
                queue.tiers[tier].add(waited, cost)
                queue.tenants.setdefault((tier, tenant), Waiting()).add(waited, cost)
            result.append(queue)
    except redis_lib.RedisError:
        logger.warning("could not read the admission queues from Redis", exc_info=True)
        return []
    return result


def _entry(value: str) -> tuple[str, str, int, int] | None:
    parts = value.split("|")
    if len(parts) != 5:
        return None
    try:
        index = int(parts[1]) - 1
        return TIERS[index], parts[2], int(float(parts[3])), int(parts[4])
    except (ValueError, IndexError):
        return None


def tenant_names(queues: list[ModelQueue]) -> dict[str, str]:
    """Tenant id → name for the tenants waiting (an id that is not one shows as itself)."""
    ids = set()
    for queue in queues:
        for _, tenant in queue.tenants:
            try:
                ids.add(uuid.UUID(tenant))
            except ValueError:
                continue
    return {str(t.pk): t.name for t in Tenant.objects.filter(pk__in=ids).only("pk", "name")}


def chart(queues: list[ModelQueue]) -> dict:
    """Depth per model, one series per tier (a stacked bar chart)."""
    return {
        "labels": [q.model for q in queues],
        "tiers": list(TIERS),
        "depth": {t: [q.tiers[t].depth for q in queues] for t in TIERS},
        "oldest_s": {t: [q.tiers[t].oldest_s for q in queues] for t in TIERS},
    }
