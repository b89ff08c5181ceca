"""Real processes: node agents (Celery over the real Redis) running the fake engine.

Rows must be visible across processes, hence ``transaction=True``. The test process plays the
control plane by calling ``reconcile()`` in a polling loop (what Celery beat does every few
seconds); the agents are ``manage.py node_agent`` subprocesses on the pytest-django test database.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from models_registry.constants import Engine
from provisioning import operations, reconciler, routing
from provisioning.constants import EventKind, WorkerState
from provisioning.models import Node, Worker, WorkerEvent
from tests.provisioning.conftest import pid_alive, wait_for
from tests.registry.factories import DeploymentFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_timings(settings):
    settings.NODE_LOST_SECONDS = 4
    settings.RESTART_BACKOFF_SECONDS = 1
    settings.DRAIN_TIMEOUT = 10
    settings.ENGINE_STOP_GRACE = 5


def ready_workers(deployment):
    return list(Worker.objects.filter(deployment=deployment, state=WorkerState.READY).select_related("node"))


def chat(worker, content="ping"):
    request = urllib.request.Request(  # noqa: S310 - a loopback engine URL
        worker.url + "/v1/chat/completions",
        data=json.dumps(
            {"model": worker.deployment.model.name, "messages": [{"role": "user", "content": content}]}
        ).encode(),
        headers={"Authorization": f"Bearer {worker.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def test_it_deploys_serves_and_scales_1_2_0(agents):
    agents.start("alpha", cpu_slots=2)
    wait_for(lambda: Node.objects.filter(name="alpha").exists(), what="node registration")
    agents.wait_consuming("alpha")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1, max_replicas=2)

    [worker] = wait_for(lambda: ready_workers(deployment), step=reconciler.reconcile, what="a ready worker")
    reply = chat(worker, "hello there")
    assert reply["choices"][0]["message"]["content"] == "pong"
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    route = routing.read(deployment.model.name)
    assert list(route) == [str(worker.pk)] and route[str(worker.pk)]["url"] == worker.url
    assert "fake engine" in open(worker.log_path).read()

    operations.scale(deployment=deployment, replicas=2, actor=None)
    wait_for(lambda: len(ready_workers(deployment)) == 2, step=reconciler.reconcile, what="2 ready workers")
    wait_for(
        lambda: len(routing.read(deployment.model.name)) == 2, step=reconciler.reconcile, what="2 routes"
    )
    pids = [w.pid for w in ready_workers(deployment)]
    assert len({w.cpu_slot for w in ready_workers(deployment)}) == 2

    operations.scale(deployment=deployment, replicas=0, actor=None)
    wait_for(
        lambda: not Worker.objects.filter(deployment=deployment).exclude(state=WorkerState.STOPPED).exists(),
        step=reconciler.reconcile,
        what="all workers stopped",
    )
    assert routing.read(deployment.model.name) == {}
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), what="engine processes gone")
    kinds = set(WorkerEvent.objects.filter(worker__deployment=deployment).values_list("kind", flat=True))
    assert {
        EventKind.CREATED,
        EventKind.PLACED,
        EventKind.SPAWNED,
        EventKind.READY,
        EventKind.DRAINING,
        EventKind.STOPPED,
    } <= kinds


def test_it_replaces_an_engine_killed_with_sigkill(agents):
    agents.start("beta", cpu_slots=1)
    agents.wait_consuming("beta")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    [first] = wait_for(lambda: ready_workers(deployment), step=reconciler.reconcile, what="a ready worker")

    os.kill(first.pid, signal.SIGKILL)

    def replaced():
        return [w for w in ready_workers(deployment) if w.pk != first.pk]

    [second] = wait_for(replaced, step=reconciler.reconcile, what="a replacement ready")
    first.refresh_from_db()
    assert first.state == WorkerState.FAILED
    assert first.exit_code == -signal.SIGKILL
    assert first.failure_reason == "engine exited with code -9"
    assert second.restart_count == 1
    assert WorkerEvent.objects.filter(
        worker=second, kind=EventKind.REPLACED, message__contains=str(first.pk)
    ).exists()
    assert chat(second)["choices"][0]["message"]["content"] == "pong"
    assert list(routing.read(deployment.model.name)) == [str(second.pk)]


def test_it_moves_workers_off_a_killed_agent(agents):
    agents.start("one", cpu_slots=1)
    agents.start("two", cpu_slots=1)
    agents.wait_consuming("one")
    agents.wait_consuming("two")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    [first] = wait_for(lambda: ready_workers(deployment), step=reconciler.reconcile, what="a ready worker")
    doomed = first.node.name
    survivor = "two" if doomed == "one" else "one"

    agents.kill(doomed)  # SIGKILL: no clean-up code runs in the agent

    wait_for(lambda: not pid_alive(first.pid), timeout=10, what="the engine to die with its agent")

    def moved():
        return [w for w in ready_workers(deployment) if w.node.name == survivor]

    [second] = wait_for(moved, step=reconciler.reconcile, timeout=60, what="the worker rescheduled")
    first.refresh_from_db()
    assert first.state == WorkerState.FAILED
    assert Node.objects.get(name=doomed).status == "lost"
    assert chat(second)["choices"][0]["message"]["content"] == "pong"


def test_a_stopped_agent_takes_its_engines_with_it(agents):
    agents.start("gamma", cpu_slots=1)
    agents.wait_consuming("gamma")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    [worker] = wait_for(lambda: ready_workers(deployment), step=reconciler.reconcile, what="a ready worker")

    agents.kill("gamma", signal.SIGTERM)  # graceful: Celery warm shutdown, then Agent.shutdown()

    assert not pid_alive(worker.pid)
    worker.refresh_from_db()
    assert worker.state == WorkerState.FAILED
    assert worker.failure_reason == "node agent gamma stopped"


def test_it_drains_in_flight_requests_before_stopping(agents):
    import threading

    agents.start("delta", cpu_slots=1, extra_env={"FAKE_ENGINE_DELAY": "3"})
    agents.wait_consuming("delta")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    [worker] = wait_for(lambda: ready_workers(deployment), step=reconciler.reconcile, what="a ready worker")
    replies: list = []
    request = threading.Thread(target=lambda: replies.append(chat(worker)))
    request.start()
    wait_for(
        lambda: (reconciler.probe.load(worker.url) or reconciler.probe.Load(0, 0)).running == 1,
        what="in flight",
    )

    operations.scale(deployment=deployment, replicas=0, actor=None)
    reconciler.reconcile()
    worker.refresh_from_db()
    assert worker.state == WorkerState.DRAINING
    assert worker.stop_requested_at is None  # a request is still running
    assert routing.read(deployment.model.name) == {}

    request.join(timeout=15)
    assert replies and replies[0]["choices"][0]["message"]["content"] == "pong"
    wait_for(
        lambda: Worker.objects.filter(pk=worker.pk, state=WorkerState.STOPPED).exists(),
        step=reconciler.reconcile,
        what="the drained worker stopped",
    )


def test_demand_from_the_gateway_scales_a_model_up_from_zero(agents, redis_client):
    from berth.redis import names
    from provisioning import autoscaler

    agents.start("epsilon", cpu_slots=1)
    agents.wait_consuming("epsilon")
    deployment = DeploymentFactory(engine=Engine.CPU, min_replicas=0, max_replicas=2, desired_replicas=0)
    reconciler.reconcile()
    assert not Worker.objects.filter(deployment=deployment).exists()

    redis_client.set(names().demand(deployment.model.name), "1", ex=60)  # what the gateway writes
    autoscaler.autoscale()

    def step():
        reconciler.reconcile()

    [worker] = wait_for(lambda: ready_workers(deployment), step=step, what="a worker started from zero")
    assert chat(worker)["choices"][0]["message"]["content"] == "pong"


def test_a_tensor_parallel_replica_gets_its_gpus_through_cuda_visible_devices(agents):
    from tests.provisioning.conftest import ROOT
    from tests.registry.factories import ModelFactory

    fake_nvml = ROOT / "tests" / "provisioning" / "fake_nvml"
    agents.start("gpu-box", cpu_slots=0, extra_env={"PYTHONPATH": f"{fake_nvml}:{ROOT}", "FAKE_GPUS": "4"})
    agents.wait_consuming("gpu-box")
    node = Node.objects.get(name="gpu-box")
    assert node.labels["accelerator"] == "nvml"
    assert list(node.gpus.values_list("index", "memory_total_mb")) == [(i, 81920) for i in range(4)]

    model = ModelFactory(tensor_parallel_size=2, gpu_memory_gb=120)
    deployment = DeploymentFactory(model=model, engine=Engine.VLLM, desired_replicas=2, max_replicas=3)
    workers = wait_for(
        lambda: len(ready_workers(deployment)) == 2 and ready_workers(deployment),
        step=reconciler.reconcile,
        what="2 TP=2 replicas",
    )
    assert sorted(w.gpu_indices for w in workers) == [[0, 1], [2, 3]]
    for worker in workers:
        visible = ",".join(map(str, worker.gpu_indices))
        assert f"CUDA_VISIBLE_DEVICES={visible}" in open(worker.log_path).read()

    operations.scale(deployment=deployment, replicas=3, actor=None)
    reconciler.reconcile()
    pending = Worker.objects.get(deployment=deployment, state=WorkerState.PENDING)
    assert (
        pending.pending_reason
        == "needs 2 free GPU(s) with 61440 MiB each on one node; at most 0 free on any node"
    )
