"""Operator actions (provisioning/operations.py): what each does to workers, and who it records."""

from __future__ import annotations

import pytest
from django.utils import timezone

from provisioning import operations, routing
from provisioning.constants import EventKind, WorkerState
from provisioning.models import Worker, WorkerEvent
from tests.factories import UserFactory
from tests.registry.factories import DeploymentFactory, NodeFactory

pytestmark = pytest.mark.django_db


def ready_deployment(reconcile, seams, replicas: int = 1):
    """A deployment whose ``replicas`` workers are ready and routed, as the reconciler leaves them."""
    NodeFactory(last_heartbeat=timezone.now(), cpu_slots=4)
    deployment = DeploymentFactory(desired_replicas=replicas, max_replicas=4)
    reconcile()
    for i, worker in enumerate(Worker.objects.filter(state=WorkerState.STARTING)):
        Worker.objects.filter(pk=worker.pk).update(url=f"http://w{i}.test:8000")
        seams.healthy.add(f"http://w{i}.test:8000")
    reconcile()
    assert Worker.objects.filter(deployment=deployment, state=WorkerState.READY).count() == replicas
    return deployment


def live(deployment) -> int:
    return Worker.objects.filter(
        deployment=deployment, state__in=[WorkerState.PENDING, WorkerState.STARTING, WorkerState.READY]
    ).count()


def test_scale_is_clamped_to_the_maximum_and_records_the_actor():
    user = UserFactory(email="ops@berth.test")
    deployment = DeploymentFactory(desired_replicas=1, max_replicas=3)
    operations.scale(deployment=deployment, replicas=9, actor=user, via="test")
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 3
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED)
    assert event.actor == user
    assert event.message == "desired replicas 1 → 3 (by ops@berth.test via test)"


def test_drain_replaces_the_worker_and_takes_it_out_of_routing_first(
    reconcile, seams, django_capture_on_commit_callbacks
):
    user = UserFactory(email="ops@berth.test")
    deployment = ready_deployment(reconcile, seams)
    worker = Worker.objects.select_related("deployment__model").get(deployment=deployment)
    assert str(worker.pk) in routing.read(deployment.model.name)
    with django_capture_on_commit_callbacks(execute=True):
        assert operations.drain(worker=worker, actor=user, via="test") is True
    assert str(worker.pk) not in routing.read(deployment.model.name)
    worker.refresh_from_db()
    assert worker.state == WorkerState.DRAINING
    event = WorkerEvent.objects.get(worker=worker, kind=EventKind.DRAINING)
    assert event.actor == user and event.message == "drained by ops@berth.test via test"
    reconcile()
    assert live(deployment) == 1  # desired replicas did not change: a replacement was created
    # Draining twice does nothing.
    assert operations.drain(worker=worker, actor=user) is False


def test_retire_stops_a_pending_worker_at_once():
    deployment = DeploymentFactory(desired_replicas=1)
    worker = Worker.objects.create(deployment=deployment, api_key="k")
    assert operations.retire(worker=worker, actor=None, reason="not needed") is True
    worker.refresh_from_db()
    assert worker.state == WorkerState.STOPPED
    assert WorkerEvent.objects.get(worker=worker, kind=EventKind.STOPPED).actor is None


def test_scale_to_zero_drains_every_worker_and_replaces_none(reconcile, seams):
    user = UserFactory(email="ops@berth.test")
    deployment = ready_deployment(reconcile, seams, replicas=2)
    operations.scale_to_zero(deployment=deployment, actor=user)
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED, worker=None, actor=user)
    assert event.message == "desired replicas 2 → 0 (scale to zero by ops@berth.test)"
    reconcile()
    assert live(deployment) == 0
    assert Worker.objects.filter(deployment=deployment, state=WorkerState.DRAINING).count() == 2


def test_restart_retires_every_live_worker_and_records_it_on_the_deployment(reconcile, seams):
    user = UserFactory(email="ops@berth.test")
    deployment = ready_deployment(reconcile, seams, replicas=2)
    pending = Worker.objects.create(deployment=deployment, api_key="k")
    assert operations.restart(deployment=deployment, actor=user, via="test") == 3
    states = sorted(Worker.objects.filter(deployment=deployment).values_list("state", flat=True))
    assert states == [WorkerState.DRAINING, WorkerState.DRAINING, WorkerState.STOPPED]
    pending.refresh_from_db()
    assert pending.state == WorkerState.STOPPED
    event = WorkerEvent.objects.get(deployment=deployment, worker=None, kind=EventKind.DRAINING)
    assert event.actor == user
    assert event.message == "restart requested by ops@berth.test via test: 3 worker(s) replaced"
    reconcile()
    assert live(deployment) == 2  # fresh ones replace them


def test_the_reconcilers_scale_down_is_a_retire_by_the_system(reconcile, seams):
    deployment = ready_deployment(reconcile, seams, replicas=2)
    operations.scale(deployment=deployment, replicas=1, actor=None, reason="autoscaler: idle")
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED)
    assert event.actor is None and event.message == "desired replicas 2 → 1 (autoscaler: idle)"
    reconcile()
    [drained] = Worker.objects.filter(deployment=deployment, state=WorkerState.DRAINING)
    event = WorkerEvent.objects.get(worker=drained, kind=EventKind.DRAINING)
    assert event.actor is None and event.message == "scaled down to 1"
    assert live(deployment) == 1


def test_admin_actions_record_the_signed_in_user(admin_client, admin_user):
    deployment = DeploymentFactory(desired_replicas=2, max_replicas=3)
    worker = Worker.objects.create(deployment=deployment, api_key="k")
    admin_client.post(
        "/admin/workers/worker/", {"action": "drain_workers", "_selected_action": [str(worker.pk)]}
    )
    assert WorkerEvent.objects.get(worker=worker, kind=EventKind.STOPPED).actor == admin_user
    admin_client.post(
        "/admin/models_registry/deployment/",
        {"action": "scale_to_zero", "_selected_action": [str(deployment.pk)]},
    )
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED)
    assert event.actor == admin_user and "scale to zero by" in event.message
