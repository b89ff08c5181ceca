"""What a node agent hands its engines: a minimal environment, and a port that
no other process can pass off as the engine.

Real processes: ``manage.py node_agent`` subprocesses running the fake engine, the test playing
the control plane with ``reconcile()``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from models_registry.constants import Engine
from provisioning import probe, reconciler
from provisioning.constants import EventKind, WorkerState
from provisioning.models import Worker, WorkerEvent
from tests.provisioning.conftest import pid_alive, wait_for
from tests.registry.factories import DeploymentFactory

pytestmark = pytest.mark.django_db(transaction=True)

SECRETS = {
    "SECRET_KEY": "django-secret-never-in-engines",
    "BERTH_INTERNAL_TOKEN": "internal-token-never-in-engines",
    "BERTH_KEY_PEPPERS": "1:pepper-never-in-engines",
    "STRIPE_SECRET_KEY": "sk_test_never_in_engines",
    "STRIPE_WEBHOOK_SECRET": "whsec_never_in_engines",
    "EMAIL_HOST_PASSWORD": "smtp-never-in-engines",
    "AWS_SECRET_ACCESS_KEY": "aws-never-in-engines",
    "SOME_FUTURE_SECRET": "unknown-names-never-in-engines",
}


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = handle.read().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if p)


def started_worker(deployment) -> Worker | None:
    return Worker.objects.filter(deployment=deployment, pid__isnull=False).first()


@pytest.fixture
def squatter(tmp_path):
    """The folder the fake launcher's squatter reports to; the squatter is killed afterwards."""
    folder = tmp_path / "squat"
    folder.mkdir()
    yield folder
    marker = folder / "squatter.pid"
    if marker.exists():
        pid = int(marker.read_text())
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_engine_gets_only_the_environment_it_needs(agents, settings):
    agents.start("env-node", cpu_slots=1, extra_env={**SECRETS, "HF_HOME": "/srv/hf", "LANG": "C.UTF-8"})
    agents.wait_consuming("env-node")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    worker = wait_for(lambda: started_worker(deployment), step=reconciler.reconcile, what="an engine process")

    env = environ_of(worker.pid)

    assert not set(SECRETS) & set(env)
    assert not any(value in "\0".join(env.values()) for value in SECRETS.values())
    assert not {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"} & set(env)
    assert not any(name.startswith("BERTH_") for name in env)
    assert env["HF_HOME"] == "/srv/hf" and env["LANG"] == "C.UTF-8" and env["PATH"]
    assert env["FAKE_ENGINE_API_KEY"] == worker.api_key  # what its launcher passes on
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_an_engine_that_inherits_its_socket_keeps_its_port_from_the_start(agents, squatter):
    agents.start(
        "inherit-node",
        cpu_slots=1,
        extra_env={"FAKE_ENGINE_INHERIT": "1", "FAKE_ENGINE_SQUAT_DIR": str(squatter)},
    )
    agents.wait_consuming("inherit-node")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)

    [worker] = wait_for(
        lambda: list(Worker.objects.filter(deployment=deployment, state=WorkerState.READY)),
        step=reconciler.reconcile,
        what="a ready worker",
    )

    squatter_pid = int((squatter / "squatter.pid").read_text())
    assert pid_alive(squatter_pid)  # still trying: the port was never free
    assert probe.port_holder(port=worker.port, pid=worker.pid) == probe.PortHolder.ENGINE
    request = urllib.request.Request(  # noqa: S310 - a loopback engine URL
        worker.url + "/v1/models", headers={"Authorization": f"Bearer {worker.api_key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["data"][0]["id"] == deployment.model.name


def test_a_foreign_server_that_takes_the_port_is_never_marked_ready(agents, squatter, settings):
    settings.RESTART_BACKOFF_SECONDS = 60  # look at the first worker only
    agents.start(
        "race-node",
        cpu_slots=1,
        # The engine binds 3 s late; the squatter binds the moment the agent lets go of the port.
        extra_env={"FAKE_ENGINE_BIND_DELAY": "3", "FAKE_ENGINE_SQUAT_DIR": str(squatter)},
    )
    agents.wait_consuming("race-node")
    deployment = DeploymentFactory(engine=Engine.CPU, desired_replicas=1)
    worker = wait_for(lambda: started_worker(deployment), step=reconciler.reconcile, what="an engine process")
    squatter_pid = int((squatter / "squatter.pid").read_text())
    wait_for(
        lambda: probe.port_holder(port=worker.port, pid=worker.pid) == probe.PortHolder.FOREIGN,
        timeout=10,
        what="the squatter on the engine's port",
    )
    assert probe.health(f"http://127.0.0.1:{worker.port}")  # it would pass a health check

    # Reconcile while the squatter holds the port and until the engine has given up on it.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        reconciler.reconcile()
        worker.refresh_from_db()
        assert worker.state != WorkerState.READY
        assert worker.url == ""
        time.sleep(0.3)

    worker.refresh_from_db()
    assert worker.state == WorkerState.FAILED  # the engine could not bind and exited
    assert not WorkerEvent.objects.filter(worker=worker, kind=EventKind.READY).exists()
    assert pid_alive(squatter_pid)
