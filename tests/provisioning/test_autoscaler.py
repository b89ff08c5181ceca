"""The autoscaler: pure decisions, and a pass reading engine load and the gateway's demand key."""

from datetime import timedelta

import pytest
from django.utils import timezone

from berth.redis import names
from provisioning import autoscaler
from provisioning.autoscaler import Observation, decide
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tests.registry.factories import DeploymentFactory


def obs(**kwargs):
    base = dict(
        desired=1,
        min_replicas=0,
        max_replicas=4,
        target=4,
        load=0.0,
        demand=False,
        idle_for=0.0,
        low_for=0.0,
        idle_seconds=300,
        scale_down_delay=60,
    )
    return Observation(**{**base, **kwargs})


def test_it_scales_up_at_once_but_not_past_max():
    assert decide(obs(load=9)) == 3
    assert decide(obs(load=100)) == 4


def test_it_scales_down_only_after_load_stays_low():
    assert decide(obs(desired=3, load=4, low_for=10)) == 3
    assert decide(obs(desired=3, load=4, low_for=61)) == 1


def test_it_keeps_one_replica_until_idle_then_goes_to_zero():
    assert decide(obs(desired=2, load=0, idle_for=100, low_for=100)) == 1
    assert decide(obs(desired=1, load=0, idle_for=100, low_for=100)) == 1
    assert decide(obs(desired=1, load=0, idle_for=301)) == 0


def test_it_never_goes_below_min():
    assert decide(obs(desired=2, min_replicas=2, load=0, idle_for=10_000, low_for=10_000)) == 2


def test_it_scales_from_zero_on_demand():
    assert decide(obs(desired=0, demand=True)) == 1
    assert decide(obs(desired=0)) == 0


@pytest.mark.django_db
def test_a_pass_reads_engine_load_and_gateway_demand(seams, redis_client):
    busy = DeploymentFactory(desired_replicas=1, max_replicas=3, target_concurrency=2)
    cold = DeploymentFactory(desired_replicas=0, max_replicas=2)
    idle = DeploymentFactory(desired_replicas=1, idle_seconds=60)
    idle.last_active_at = timezone.now() - timedelta(seconds=120)
    idle.save()
    worker = Worker.objects.create(
        deployment=busy, state=WorkerState.READY, url="http://busy.test:1", api_key="k"
    )
    seams.loads[worker.url] = 5
    redis_client.set(names().demand(cold.model.name), "1", ex=60)
    autoscaler.autoscale()
    for deployment in (busy, cold, idle):
        deployment.refresh_from_db()
    assert (busy.desired_replicas, cold.desired_replicas, idle.desired_replicas) == (3, 1, 0)
    assert busy.last_active_at is not None


@pytest.mark.django_db
def test_it_prefers_the_gateways_fresh_scrape_over_probing(seams, redis_client):
    import json
    import time

    deployment = DeploymentFactory(desired_replicas=1, max_replicas=4, target_concurrency=1)
    fresh = Worker.objects.create(
        deployment=deployment, state=WorkerState.READY, url="http://a.test:1", api_key="k"
    )
    stale = Worker.objects.create(
        deployment=deployment, state=WorkerState.READY, url="http://b.test:1", api_key="k"
    )
    redis_client.hset(
        names().engine_load(),
        mapping={
            str(fresh.pk): json.dumps({"running": 2, "waiting": 1, "kv": 0.1, "at": time.time()}),
            str(stale.pk): json.dumps({"running": 50, "waiting": 0, "kv": 0.1, "at": time.time() - 600}),
        },
    )
    seams.loads[stale.url] = 0  # the stale scrape is ignored; the engine itself says idle
    autoscaler.autoscale()
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 3


@pytest.mark.django_db
def test_scaling_up_from_zero_asks_for_a_reconcile_at_once(
    seams, redis_client, django_capture_on_commit_callbacks
):
    cold = DeploymentFactory(desired_replicas=0, max_replicas=2)
    redis_client.set(names().demand(cold.model.name), "1", ex=60)
    with django_capture_on_commit_callbacks(execute=True):
        autoscaler.autoscale()
    assert ("reconcile", "", "celery") in seams.sent
