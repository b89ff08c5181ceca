"""The reconciler against the real database, with the agent and engine seams stubbed."""

from datetime import timedelta

import pytest
from django.utils import timezone

from models_registry.constants import Engine
from provisioning import reconciler, routing
from provisioning.constants import EventKind, NodeStatus, WorkerState
from provisioning.models import Node, Worker, WorkerEvent
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory, add_gpus

pytestmark = pytest.mark.django_db


def fresh(node):
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now(), status=NodeStatus.READY)


def spawn_all(seams):
    """What an agent would do: give each started worker a URL (and a pid)."""
    for i, worker in enumerate(Worker.objects.filter(state=WorkerState.STARTING, url="")):
        Worker.objects.filter(pk=worker.pk).update(url=f"http://w{i}.test:8000", pid=1000 + i)


def test_it_places_a_replica_and_sends_start_to_the_node_queue(reconcile, seams):
    node = NodeFactory(name="n1", last_heartbeat=timezone.now())
    deployment = DeploymentFactory(desired_replicas=1)
    reconcile()
    worker = Worker.objects.get(deployment=deployment)
    assert worker.state == WorkerState.STARTING
    assert (worker.node, worker.cpu_slot, worker.gpu_indices) == (node, 0, [])
    assert seams.sent == [("start_engine", str(worker.pk), "node.n1")]


def test_it_marks_healthy_workers_ready_and_publishes_routes(reconcile, seams):
    NodeFactory(last_heartbeat=timezone.now())
    deployment = DeploymentFactory(desired_replicas=1)
    reconcile()
    spawn_all(seams)
    worker = Worker.objects.get()
    seams.healthy.add(Worker.objects.get().url)
    reconcile()
    worker.refresh_from_db()
    assert worker.state == WorkerState.READY
    route = routing.read(deployment.model.name)
    assert route[str(worker.pk)]["url"] == worker.url
    assert route[str(worker.pk)]["api_key"] == worker.api_key


def test_it_leaves_replicas_pending_with_a_reason_when_gpus_are_short(reconcile, seams):
    node = NodeFactory(last_heartbeat=timezone.now(), cpu_slots=0)
    add_gpus(node, 2)
    model = ModelFactory(tensor_parallel_size=4, gpu_memory_gb=160)
    DeploymentFactory(model=model, engine=Engine.VLLM, desired_replicas=1)
    reconcile()
    worker = Worker.objects.get()
    assert worker.state == WorkerState.PENDING
    assert worker.pending_reason == "needs 4 GPUs on one node; the largest node has 2"
    assert WorkerEvent.objects.filter(worker=worker, kind=EventKind.PENDING).exists()
    assert seams.sent == []


def test_it_gives_a_tensor_parallel_replica_gpus_on_one_node(reconcile, seams):
    small, big = NodeFactory(last_heartbeat=timezone.now()), NodeFactory(last_heartbeat=timezone.now())
    add_gpus(small, 2)
    add_gpus(big, 8)
    model = ModelFactory(tensor_parallel_size=4, gpu_memory_gb=160)
    DeploymentFactory(model=model, engine=Engine.VLLM, desired_replicas=2, max_replicas=2)
    reconcile()
    placed = list(Worker.objects.order_by("gpu_indices"))
    assert {w.node_id for w in placed} == {big.pk}
    assert sorted(i for w in placed for i in w.gpu_indices) == list(range(8))


def test_it_drains_before_stopping_on_scale_down(reconcile, seams):
    NodeFactory(last_heartbeat=timezone.now())
    deployment = DeploymentFactory(desired_replicas=1)
    reconcile()
    spawn_all(seams)
    worker = Worker.objects.get()
    seams.healthy.add(worker.url)
    reconcile()
    seams.loads[worker.url] = 2  # two requests in flight
    deployment.desired_replicas = 0
    deployment.save()
    seams.sent.clear()
    reconcile()
    worker.refresh_from_db()
    assert worker.state == WorkerState.DRAINING
    assert routing.read(deployment.model.name) == {}
    assert seams.sent == []  # still busy: not stopped yet
    seams.loads[worker.url] = 0
    reconcile()
    assert seams.sent == [("stop_engine", str(worker.pk), worker.node.queue)]


def test_it_replaces_a_crashed_worker_with_backoff(reconcile, seams, settings):
    settings.RESTART_BACKOFF_SECONDS = 30
    settings.NODE_LOST_SECONDS = 120
    NodeFactory(last_heartbeat=timezone.now())
    DeploymentFactory(desired_replicas=1)
    reconcile()
    first = Worker.objects.get()
    Worker.objects.filter(pk=first.pk).update(
        state=WorkerState.FAILED, crashed=True, finished_at=timezone.now(), failure_reason="exit 1"
    )
    reconcile()
    replacement = Worker.objects.exclude(pk=first.pk).get()
    assert replacement.state == WorkerState.PENDING
    assert replacement.restart_count == 1
    assert replacement.pending_reason.startswith("restart backoff until")
    assert WorkerEvent.objects.filter(worker=replacement, kind=EventKind.REPLACED).exists()
    reconcile(now=timezone.now() + timedelta(seconds=31))
    replacement.refresh_from_db()
    assert replacement.state == WorkerState.STARTING
    assert Worker.objects.count() == 2  # exactly one replacement


def test_it_reschedules_the_workers_of_a_lost_node(reconcile, seams, settings):
    settings.NODE_LOST_SECONDS = 10
    old = timezone.now() - timedelta(seconds=60)
    lost = NodeFactory(name="lost", last_heartbeat=timezone.now())
    DeploymentFactory(desired_replicas=1)
    reconcile()
    assert Worker.objects.get().node == lost
    Node.objects.filter(pk=lost.pk).update(last_heartbeat=old)
    alive = NodeFactory(name="alive", last_heartbeat=timezone.now())
    reconcile()
    lost.refresh_from_db()
    assert lost.status == NodeStatus.LOST
    failed = Worker.objects.get(node=lost)
    assert failed.state == WorkerState.FAILED
    assert failed.failure_reason.startswith("node lost lost (no heartbeat since")
    assert WorkerEvent.objects.filter(worker=failed, kind=EventKind.NODE_LOST).exists()
    assert Worker.objects.get(node=alive).state == WorkerState.STARTING


def test_it_does_nothing_while_another_pass_holds_the_lock(reconcile, seams):
    from django.db import connections

    NodeFactory(last_heartbeat=timezone.now())
    DeploymentFactory(desired_replicas=1)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [reconciler.RECONCILE_LOCK])
        assert reconciler.reconcile() is None
        assert not Worker.objects.exists()
    finally:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [reconciler.RECONCILE_LOCK])
        other.close()
    assert reconcile() is not None


def test_a_second_pass_changes_nothing(reconcile, seams):
    NodeFactory(last_heartbeat=timezone.now())
    DeploymentFactory(desired_replicas=2)
    reconcile()
    reconcile()
    assert Worker.objects.count() == 2
    assert len(seams.sent) == 2


def test_it_fails_and_replaces_a_ready_worker_that_stops_answering(reconcile, seams, settings):
    settings.UNHEALTHY_AFTER = 3
    settings.RESTART_BACKOFF_SECONDS = 0
    NodeFactory(last_heartbeat=timezone.now())
    deployment = DeploymentFactory(desired_replicas=1)
    reconcile()
    spawn_all(seams)
    worker = Worker.objects.get()
    seams.healthy.add(worker.url)
    reconcile()
    seams.healthy.clear()  # hung: the process lives but /health times out
    reconcile()
    reconcile()
    worker.refresh_from_db()
    assert (worker.state, worker.health_failures) == (WorkerState.READY, 2)
    seams.sent.clear()
    reconcile()
    worker.refresh_from_db()
    assert worker.state == WorkerState.FAILED
    assert worker.failure_reason == "/health failed 3 times in a row"
    assert ("stop_engine", str(worker.pk), worker.node.queue) in seams.sent
    assert routing.read(deployment.model.name) == {}
    assert Worker.objects.filter(deployment=deployment, state=WorkerState.STARTING).exists()
