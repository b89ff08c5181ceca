"""Measured busy and idle serving time: a beat task samples the engines' gauges once a minute.

The gateway already scrapes every engine's ``running``/``waiting``/``kv`` gauges into the
``engine_load`` Redis hash about once a second; the sampler reads that hash and adds one sample
per ready worker to the worker's ``UtilizationHour`` row. A sample is *busy* when the engine had
requests running or waiting (KV use alone is not: the prefix cache keeps blocks filled on an idle
engine). A worker whose entry is missing or stale (no gateway scraping it) gets no sample, so its
serving time counts as unmeasured rather than guessed idle.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import F

from berth.redis import get_redis, names
from economics.models import UtilizationHour
from provisioning.constants import WorkerState
from provisioning.models import Worker

logger = logging.getLogger(__name__)

# An ``engine_load`` entry older than this is not a measurement of now.
FRESH_SECONDS = 30.0


def _gauges(raw: str | bytes, now: float) -> dict | None:
    try:
        entry = json.loads(raw)
        at = float(entry.get("at", 0))
        at = at / 1000 if at > 1e11 else at  # tolerate milliseconds
        if now - at > FRESH_SECONDS:
            return None
        return {
            "running": float(entry.get("running") or 0),
            "waiting": float(entry.get("waiting") or 0),
            "kv": float(entry.get("kv") or 0),
        }
    except (ValueError, TypeError, AttributeError):
        return None


def sample(*, now: float | None = None) -> int:
    """Add one sample per ready worker with fresh gauges; returns how many were added."""
    now = time.time() if now is None else now
    loads = get_redis().hgetall(names().engine_load())
    if not loads:
        return 0
    by_id = {(k.decode() if isinstance(k, bytes) else k): v for k, v in loads.items()}
    ready = Worker.objects.filter(state=WorkerState.READY, pk__in=_uuids(by_id)).values_list("pk", flat=True)
    hour = datetime.fromtimestamp(now, UTC).replace(minute=0, second=0, microsecond=0)
    added = 0
    for worker_id in ready:
        gauges = _gauges(by_id[str(worker_id)], now)
        if gauges is None:
            continue
        busy = 1 if gauges["running"] > 0 or gauges["waiting"] > 0 else 0
        with transaction.atomic():
            row, _ = UtilizationHour.objects.select_for_update().get_or_create(worker_id=worker_id, hour=hour)
            UtilizationHour.objects.filter(pk=row.pk).update(
                samples=F("samples") + 1,
                busy_samples=F("busy_samples") + busy,
                running_sum=F("running_sum") + gauges["running"],
                kv_sum=F("kv_sum") + gauges["kv"],
            )
        added += 1
    logger.debug("utilization: %s samples at %s", added, hour)
    return added


def _uuids(ids) -> list[str]:
    out = []
    for value in ids:
        try:
            out.append(str(uuid.UUID(value)))
        except ValueError:
            continue
    return out
