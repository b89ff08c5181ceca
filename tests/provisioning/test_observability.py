"""Prometheus service discovery of engines and the GPU-pool gauges."""

from __future__ import annotations

import pytest

from models_registry.constants import Engine
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory, add_gpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool():
    node = NodeFactory(name="gpu-a", cpu_slots=0)
    add_gpus(node, 4)
    model = ModelFactory(name="llama")
    deployment = DeploymentFactory(model=model, engine=Engine.VLLM)
    ready = Worker.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=[0, 1],
        url="http://10.0.0.5:9001",
        state=WorkerState.READY,
        api_key="k",
    )
    Worker.objects.create(
        deployment=deployment, node=node, gpu_indices=[2], state=WorkerState.STARTING, api_key="k"
    )
    Worker.objects.create(
        deployment=deployment, node=node, gpu_indices=[3], state=WorkerState.STOPPED, api_key="k"
    )
    return ready


def test_engine_targets_list_ready_workers_for_http_sd(client, pool):
    body = client.get("/internal/prometheus/engines").json()
    assert body == [
        {
            "targets": ["10.0.0.5:9001"],
            "labels": {
                "model": "llama",
                "deployment": str(pool.deployment_id),
                "node": "gpu-a",
                "worker": str(pool.pk),
            },
        }
    ]


def test_pool_gauges_count_gpus_in_use_by_live_workers(client, pool):
    text = client.get("/internal/metrics").content.decode()
    assert 'berth_pool_gpus{node="gpu-a",status="ready"} 4' in text
    assert 'berth_pool_gpus_in_use{node="gpu-a"} 3' in text  # the stopped worker holds nothing
    assert 'berth_workers{model="llama",state="ready"} 1' in text
    assert 'berth_workers{model="llama",state="starting"} 1' in text
    assert "stopped" not in text


def test_a_configured_token_is_required(client, settings, pool):
    settings.INTERNAL_TOKEN = "s3cret"
    assert client.get("/internal/metrics").status_code == 401
    assert client.get("/internal/prometheus/engines", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/internal/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
