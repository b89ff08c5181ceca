"""Staff pages: workers with pending reasons, events and log tail (never the engine key)."""

import pytest
from django.utils import timezone

from provisioning.constants import EventKind, WorkerState
from provisioning.models import Worker, WorkerEvent
from tests.registry.factories import DeploymentFactory, NodeFactory

pytestmark = pytest.mark.django_db


def test_the_worker_page_shows_events_and_log_tail_but_not_the_key(admin_client, tmp_path):
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    worker = Worker.objects.create(
        deployment=DeploymentFactory(),
        node=NodeFactory(),
        state=WorkerState.FAILED,
        api_key="engine-secret-key",
        log_path=str(log),
        failure_reason="engine exited with code 1",
    )
    WorkerEvent.objects.create(worker=worker, kind=EventKind.FAILED, message="engine exited with code 1")
    page = admin_client.get(f"/admin/workers/worker/{worker.pk}/change/").content.decode()
    assert "line 499" in page and "line 299" not in page
    assert "engine exited with code 1" in page
    assert "engine-secret-key" not in page
    listing = admin_client.get("/admin/workers/worker/").content.decode()
    assert "engine-secret-key" not in listing


def test_the_worker_list_shows_pending_reasons(admin_client):
    Worker.objects.create(
        deployment=DeploymentFactory(), api_key="k", pending_reason="needs 4 GPUs on one node"
    )
    assert "needs 4 GPUs on one node" in admin_client.get("/admin/workers/worker/").content.decode()


def test_the_deployment_actions_scale_and_log_an_event(admin_client):
    deployment = DeploymentFactory(desired_replicas=1, max_replicas=3)
    response = admin_client.post(
        "/admin/models_registry/deployment/",
        {"action": "scale_up", "_selected_action": [str(deployment.pk)]},
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 2
    assert WorkerEvent.objects.filter(deployment=deployment, kind=EventKind.SCALED).exists()
    admin_client.post(
        "/admin/models_registry/deployment/",
        {"action": "scale_to_zero", "_selected_action": [str(deployment.pk)]},
    )
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 0


def test_the_node_and_deployment_lists_render(admin_client):
    NodeFactory(last_heartbeat=timezone.now())
    DeploymentFactory()
    assert admin_client.get("/admin/workers/node/").status_code == 200
    assert admin_client.get("/admin/models_registry/deployment/").status_code == 200
    assert admin_client.get("/admin/workers/workerevent/").status_code == 200


def test_worker_events_are_append_only():
    from django.core.exceptions import ValidationError

    event = WorkerEvent.objects.create(kind=EventKind.SCALED, message="x")
    event.message = "y"
    with pytest.raises(ValidationError):
        event.save()
