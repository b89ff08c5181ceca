"""Staff pages: who may see them, and what the fleet page shows."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from provisioning.constants import WorkerState
from provisioning.models import Gpu, Worker
from staff import queries
from tests.factories import UserFactory
from tests.registry.factories import DeploymentFactory, NodeFactory, add_gpus

pytestmark = pytest.mark.django_db

GET_PAGES = [
    "staff:fleet",
    "staff:fleet-pool",
    "staff:fleet-workers",
    "staff:fleet-deployments",
    "staff:tenants",
    "staff:revenue",
    "staff:traffic",
    "staff:traffic-data",
]


@pytest.mark.parametrize("name", GET_PAGES)
def test_anonymous_users_are_sent_to_log_in(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", GET_PAGES)
def test_non_staff_users_get_403(client, name):
    client.force_login(UserFactory())
    assert client.get(reverse(name)).status_code == 403


def test_actions_are_forbidden_to_non_staff_and_change_nothing(client):
    deployment = DeploymentFactory(desired_replicas=1)
    client.force_login(UserFactory())
    for name in ["staff:scale", "staff:drain-deployment", "staff:restart"]:
        assert client.post(reverse(name, args=[deployment.pk]), {"replicas": 3}).status_code == 403
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 1


@pytest.mark.parametrize("name", GET_PAGES)
def test_staff_see_every_page(staff_client, name):
    response = staff_client.get(reverse(name))
    assert response.status_code == 200


def test_staff_link_only_for_staff(client, staff_client):
    assert reverse("staff:fleet") in staff_client.get(reverse("staff:fleet")).content.decode()
    client.force_login(UserFactory())
    assert f'href="{reverse("staff:fleet")}"' not in client.get(reverse("console:overview")).content.decode()


def test_fleet_shows_nodes_slots_and_workers(staff_client):
    node = NodeFactory(name="gpu-box", address="10.0.0.7", cpu_slots=1)
    add_gpus(node, 2, memory_mb=80_000)
    Gpu.objects.filter(node=node, index=0).update(memory_used_mb=40_000, utilization=73)
    deployment = DeploymentFactory(model__name="llama-8b", engine="vllm", desired_replicas=1, max_replicas=3)
    worker = Worker.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=[0],
        state=WorkerState.READY,
        api_key="k",
        restart_count=2,
    )
    html = staff_client.get(reverse("staff:fleet")).content.decode()
    assert "gpu-box" in html and "10.0.0.7" in html
    assert "GPU 0" in html and "GPU 1" in html and "CPU slot 0" in html
    assert "40000 / 80000 MB (50%)" in html and "util 73%" in html
    assert html.count("Free") >= 2  # GPU 1 and the CPU slot
    assert str(worker.pk)[:8] in html and "llama-8b" in html
    assert reverse("admin:workers_worker_change", args=[worker.pk]) in html
    assert 'hx-trigger="every 5s' in html
    assert "1 ready</span> / 1 desired" in html
    # fragments poll on their own
    pool = staff_client.get(reverse("staff:fleet-pool")).content.decode()
    assert "gpu-box" in pool and "<html" not in pool
    rows = staff_client.get(reverse("staff:fleet-workers")).content.decode()
    assert f'id="worker-{worker.pk}"' in rows and "Ready" in rows


def test_empty_fleet(staff_client):
    html = staff_client.get(reverse("staff:fleet")).content.decode()
    assert "No nodes yet" in html and "No deployments yet" in html and "No workers." in html


def test_pool_puts_a_multi_gpu_worker_on_each_of_its_gpus_and_ignores_finished_ones(staff_client):
    node = NodeFactory(name="big", cpu_slots=0)
    add_gpus(node, 4)
    deployment = DeploymentFactory(engine="vllm", model__tensor_parallel_size=2, max_replicas=2)
    live = Worker.objects.create(
        deployment=deployment, node=node, gpu_indices=[1, 2], state="starting", api_key="k"
    )
    Worker.objects.create(deployment=deployment, node=node, gpu_indices=[3], state="stopped", api_key="k")
    [card] = queries.pool()
    assert [slot.worker for slot in card.gpus] == [None, live, live, None]
    assert (card.used, card.total) == (2, 4) and card.cpu_slots == []


def test_every_input_on_the_fleet_page_has_a_label_and_every_button_has_text(staff_client):
    DeploymentFactory()
    DeploymentFactory()
    html = staff_client.get(reverse("staff:fleet")).content.decode()
    inputs = re.findall(r'<input id="([^"]+)"[^>]*type="number"', html)
    assert len(inputs) == 2
    for input_id in inputs:
        assert f'<label for="{input_id}">' in html
    for label in re.findall(r"<button[^>]*>(.*?)</button>", html, flags=re.S):
        assert re.sub(r"<[^>]+>", "", label).strip()


def test_the_workers_table_shows_the_lora_adapters_each_worker_holds(staff_client, redis_client):
    from berth.redis import names

    deployment = DeploymentFactory(model__name="tiny-base", engine="cpu", max_loras=2)
    holder, other = (
        Worker.objects.create(deployment=deployment, state=WorkerState.READY, api_key=k) for k in ("a", "b")
    )
    # What gateway.adapters records after loading adapters on a worker.
    redis_client.hset(
        names().lora_held(str(holder.pk)), "acme/support-v2", '{"parent": "tiny-base", "at": 1}'
    )
    redis_client.hset(names().lora_held(str(holder.pk)), "beta/sql", '{"parent": "tiny-base", "at": 2}')

    rows = staff_client.get(reverse("staff:fleet-workers")).content.decode()

    holder_row = rows[rows.index(f'id="worker-{holder.pk}"') :].split("</tr>")[0]
    other_row = rows[rows.index(f'id="worker-{other.pk}"') :].split("</tr>")[0]
    assert "LoRA (2): acme/support-v2, beta/sql" in holder_row
    assert "LoRA" not in other_row
