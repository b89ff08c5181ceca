"""Scale, drain and restart from the staff dashboard call the reconciler and leave events."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from provisioning.constants import EventKind, WorkerState
from provisioning.models import Worker, WorkerEvent
from tests.registry.factories import DeploymentFactory, NodeFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def ready_worker(deployment, node, slot=0):
    return Worker.objects.create(
        deployment=deployment, node=node, cpu_slot=slot, state=WorkerState.READY, api_key="k", url="http://x"
    )


def test_scale_sets_desired_replicas_and_records_who(staff_client, staff_user):
    deployment = DeploymentFactory(model__name="tiny", desired_replicas=0, max_replicas=3)
    response = staff_client.post(reverse("staff:scale", args=[deployment.pk]), {"replicas": "2"})
    assert response.status_code == 302 and response["Location"].endswith("/staff/#deployments")
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 2
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED)
    assert "0 → 2" in event.message and staff_user.email in event.message
    assert event.actor == staff_user
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["tiny: desired replicas 0 → 2."]


def test_scale_over_the_maximum_is_clamped_and_says_so(staff_client):
    deployment = DeploymentFactory(model__name="tiny", desired_replicas=0, max_replicas=3)
    response = staff_client.post(reverse("staff:scale", args=[deployment.pk]), {"replicas": "10"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="deployment-{deployment.pk}"' in html and "<html" not in html
    assert "0 → 3" in html and "above the maximum of 3" in html
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "Enter a number"), ("abc", "whole number"), ("1.5", "whole number"), ("-1", "cannot be negative")],
)
def test_an_invalid_scale_value_is_an_error_not_a_500(staff_client, value, message):
    deployment = DeploymentFactory(desired_replicas=1, max_replicas=3)
    response = staff_client.post(reverse("staff:scale", args=[deployment.pk]), {"replicas": value}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'role="alert"' in html and message in html and 'aria-invalid="true"' in html
    # and without JavaScript: back to the page with the error as a message
    response = staff_client.post(reverse("staff:scale", args=[deployment.pk]), {"replicas": value})
    assert response.status_code == 302
    assert any(message in str(m) for m in get_messages(response.wsgi_request))
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 1
    assert not WorkerEvent.objects.filter(kind=EventKind.SCALED).exists()


def test_unknown_deployment_is_404(staff_client):
    url = reverse("staff:scale", args=["00000000-0000-0000-0000-000000000000"])
    assert staff_client.post(url, {"replicas": 1}).status_code == 404


def test_actions_need_post(staff_client):
    deployment = DeploymentFactory()
    assert staff_client.get(reverse("staff:scale", args=[deployment.pk])).status_code == 405


def test_drain_deployment_drains_its_ready_workers_only(
    staff_client, staff_user, django_capture_on_commit_callbacks
):
    node = NodeFactory(cpu_slots=3)
    deployment = DeploymentFactory(desired_replicas=2, max_replicas=3)
    a, b = ready_worker(deployment, node, 0), ready_worker(deployment, node, 1)
    starting = Worker.objects.create(deployment=deployment, state=WorkerState.STARTING, api_key="k")
    other = ready_worker(DeploymentFactory(), node, 2)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("staff:drain-deployment", args=[deployment.pk]), **HTMX)
    assert response.status_code == 200 and "2 ready worker(s) draining" in response.content.decode()
    states = dict(Worker.objects.values_list("pk", "state"))
    assert states[a.pk] == states[b.pk] == WorkerState.DRAINING
    assert states[starting.pk] == WorkerState.STARTING and states[other.pk] == WorkerState.READY
    messages = WorkerEvent.objects.filter(worker=a, kind=EventKind.DRAINING).values_list("message", flat=True)
    assert any(staff_user.email in m for m in messages)


def test_drain_one_worker_from_the_workers_table(staff_client, staff_user):
    worker = ready_worker(DeploymentFactory(), NodeFactory())
    response = staff_client.post(reverse("staff:drain-worker", args=[worker.pk]), **HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and f'id="worker-{worker.pk}"' in html and "Draining" in html
    worker.refresh_from_db()
    assert worker.state == WorkerState.DRAINING
    assert WorkerEvent.objects.filter(
        worker=worker, message__contains=staff_user.email, actor=staff_user
    ).exists()
    # again: nothing to drain, said plainly
    response = staff_client.post(reverse("staff:drain-worker", args=[worker.pk]))
    assert response.status_code == 302
    assert any("nothing to drain" in str(m) for m in get_messages(response.wsgi_request))


def test_restart_drains_live_workers_and_records_it(staff_client, staff_user):
    node = NodeFactory()
    deployment = DeploymentFactory(model__name="tiny", desired_replicas=2, max_replicas=3)
    ready = ready_worker(deployment, node)
    pending = Worker.objects.create(deployment=deployment, state=WorkerState.PENDING, api_key="k")
    response = staff_client.post(reverse("staff:restart", args=[deployment.pk]), **HTMX)
    assert response.status_code == 200 and "restarting 2 worker(s)" in response.content.decode()
    ready.refresh_from_db()
    pending.refresh_from_db()
    assert ready.state == WorkerState.DRAINING and pending.state == WorkerState.STOPPED
    assert WorkerEvent.objects.filter(
        deployment=deployment, worker=None, message__contains=f"restart requested by {staff_user.email}"
    ).exists()


def test_scaling_to_zero_is_called_that(staff_client, staff_user):
    deployment = DeploymentFactory(model__name="tiny", desired_replicas=2, max_replicas=3)
    response = staff_client.post(reverse("staff:scale", args=[deployment.pk]), {"replicas": "0"}, **HTMX)
    assert "tiny: scaled to zero (desired replicas 2 → 0)." in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 0
    event = WorkerEvent.objects.get(deployment=deployment, kind=EventKind.SCALED)
    assert event.actor == staff_user and event.message.startswith("desired replicas 2 → 0 (scale to zero by")
