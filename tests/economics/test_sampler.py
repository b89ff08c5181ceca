"""The utilization sampler: fresh gauges of ready workers become hourly busy/idle counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from berth.redis import names
from economics import sampler
from economics.models import UtilizationHour
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tests.registry.factories import DeploymentFactory

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()


def _load(redis_client, worker, *, running=0, waiting=0, kv=0.0, at=T0):
    entry = {"running": running, "waiting": waiting, "kv": kv, "at": at}
    redis_client.hset(names().engine_load(), str(worker.pk), json.dumps(entry))


def test_samples_accumulate_per_worker_and_hour(db, redis_client):
    deployment = DeploymentFactory()
    busy = Worker.objects.create(deployment=deployment, state=WorkerState.READY, api_key="k")
    idle = Worker.objects.create(deployment=deployment, state=WorkerState.READY, api_key="k")
    draining = Worker.objects.create(deployment=deployment, state=WorkerState.DRAINING, api_key="k")
    stale = Worker.objects.create(deployment=deployment, state=WorkerState.READY, api_key="k")
    _load(redis_client, busy, running=3, kv=0.5)
    _load(redis_client, idle, kv=0.9)  # KV held by the prefix cache alone is not busy
    _load(redis_client, draining, running=1)
    _load(redis_client, stale, running=1, at=T0 - 120)
    redis_client.hset(names().engine_load(), "not-a-uuid", "{}")

    assert sampler.sample(now=T0) == 2
    _load(redis_client, busy, waiting=2, at=T0 + 60)
    _load(redis_client, idle, at=T0 + 60)
    assert sampler.sample(now=T0 + 60) == 2

    rows = {row.worker_id: row for row in UtilizationHour.objects.all()}
    assert set(rows) == {busy.pk, idle.pk}
    assert rows[busy.pk].hour == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert (rows[busy.pk].samples, rows[busy.pk].busy_samples, rows[busy.pk].running_sum) == (2, 2, 3.0)
    assert (rows[idle.pk].samples, rows[idle.pk].busy_samples, rows[idle.pk].kv_sum) == (2, 0, 0.9)


def test_nothing_scraped_adds_nothing(db, redis_client):
    assert sampler.sample(now=T0) == 0
    assert not UtilizationHour.objects.exists()
