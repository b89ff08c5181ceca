"""The node agent with the real CPU engine (``provisioning.engines.cpu``) and the tiny model.

Skipped where the ``cpu`` extra is not installed; otherwise it is the end-to-end check that the agent's EngineSpec, environment and
health checks fit the engine contract.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from models_registry.constants import Engine, SourceKind
from provisioning import operations, probe, reconciler
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tests.provisioning.conftest import pid_alive, wait_for
from tests.registry.factories import DeploymentFactory, ModelFactory

pytest.importorskip("provisioning.engines.cpu")
tiny_model = pytest.importorskip("cpu_engine.tiny_model")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model.create_tiny_model(folder)
    return folder


def test_it_runs_the_real_cpu_engine(agents, tiny_model_dir, settings):
    settings.WORKER_START_TIMEOUT = 120
    agents.start("cpu-real", cpu_slots=1, extra_env={"BERTH_ENGINE_LAUNCHER_OVERRIDE": ""})
    agents.wait_consuming("cpu-real")
    model = ModelFactory(
        name="tiny-real", source=str(tiny_model_dir), source_kind=SourceKind.LOCAL, context_length=2048
    )
    deployment = DeploymentFactory(model=model, engine=Engine.CPU, desired_replicas=1)

    def ready():
        return Worker.objects.filter(deployment=deployment, state=WorkerState.READY).first()

    def failed():
        bad = Worker.objects.filter(deployment=deployment, state=WorkerState.FAILED).first()
        assert bad is None, f"engine failed: {bad.failure_reason}"

    worker = wait_for(
        ready, step=lambda: (reconciler.reconcile(), failed()), timeout=120, what="the CPU engine"
    )
    # The engine serves on the socket the agent bound for it, and nobody else listens there.
    assert "--fd" in open(worker.log_path).read()
    assert probe.port_holder(port=worker.port, pid=worker.pid) == probe.PortHolder.ENGINE
    request = urllib.request.Request(  # noqa: S310 - a loopback engine URL
        worker.url + "/v1/chat/completions",
        data=json.dumps(
            {"model": "tiny-real", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        ).encode(),
        headers={"Authorization": f"Bearer {worker.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        body = json.loads(response.read())
    assert body["usage"]["completion_tokens"] > 0

    operations.scale(deployment=deployment, replicas=0, actor=None)
    wait_for(
        lambda: Worker.objects.filter(pk=worker.pk, state=WorkerState.STOPPED).exists(),
        step=reconciler.reconcile,
        what="the engine stopped",
    )
    wait_for(lambda: not pid_alive(worker.pid), timeout=20, what="the engine process gone")
