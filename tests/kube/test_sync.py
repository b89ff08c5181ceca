"""The reconciler on Kubernetes: vLLM deployments become groups; ready pods become routes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from berth.redis import names
from models_registry.constants import Engine
from provisioning import reconciler
from provisioning.k8s import sync as kube
from provisioning.models import Worker
from tests.kube.test_backend import pod
from tests.registry.factories import DeploymentFactory, ModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def on_kubernetes(settings, backend, monkeypatch):
    settings.PROVISIONER = "kubernetes"
    settings.K8S_NAMESPACE = "inference"
    settings.K8S_ENGINE_API_KEY = "engine-key-from-secret"
    monkeypatch.setattr(kube, "connect", lambda: backend)
    return backend


def test_a_vllm_deployment_becomes_a_group_with_its_desired_replicas(api, backend, settings):
    settings.K8S_NAMESPACE = "inference"
    deployment = DeploymentFactory(
        model=ModelFactory(name="llama-3.1-8b", tensor_parallel_size=2, source="meta-llama/Llama-3.1-8B"),
        engine=Engine.VLLM,
        desired_replicas=3,
    )
    table = kube.sync([deployment], Counter(), backend)
    name = kube.group_name(deployment)
    created = api.get("deployments", "inference", name)
    assert created["spec"]["replicas"] == 3
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (2, "2")
    assert "--served-model-name" in container["args"] and "llama-3.1-8b" in container["args"]
    assert api.get("services", "inference", name) is not None
    assert table == {}  # no pod is ready yet


def test_a_lora_deployment_gets_the_lora_flags_and_runtime_loading(api, backend, settings):
    settings.K8S_NAMESPACE = "inference"
    deployment = DeploymentFactory(
        model=ModelFactory(name="llama-lora"),
        engine=Engine.VLLM,
        max_loras=4,
        max_cpu_loras=24,
        max_lora_rank=32,
    )
    kube.sync([deployment], Counter(), backend)
    container = api.get("deployments", "inference", kube.group_name(deployment))["spec"]["template"]["spec"][
        "containers"
    ][0]
    args = container["args"]
    assert args[args.index("--max-loras") + 1] == "4"
    assert args[args.index("--max-cpu-loras") + 1] == "24"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    assert "--enable-lora" in args
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_ready_pods_are_published_as_routes_and_orphans_deleted(api, on_kubernetes, redis_client):
    deployment = DeploymentFactory(model=ModelFactory(name="llama"), engine=Engine.VLLM, desired_replicas=1)
    name = kube.group_name(deployment)
    api.add("pods", pod(f"{name}-abc", ip="10.42.0.9", group=name))
    orphan = DeploymentFactory(model=ModelFactory(name="old"), engine=Engine.VLLM)
    kube.sync([orphan], Counter(), on_kubernetes)
    orphan_name = kube.group_name(orphan)
    orphan.delete()

    stats = reconciler.reconcile()
    assert stats["k8s_ready"] == 1 and stats["k8s_deleted"] == 1
    assert api.get("deployments", "inference", orphan_name) is None
    route = json.loads(redis_client.hget(names().route("llama"), f"{name}-abc"))
    assert route["url"] == "http://10.42.0.9:8000" and route["api_key"] == "engine-key-from-secret"
    assert not Worker.objects.exists()  # nothing was placed on node agents


def test_cpu_deployments_still_go_to_node_agents(api, on_kubernetes):
    DeploymentFactory(model=ModelFactory(name="tiny"), engine=Engine.CPU, desired_replicas=1)
    reconciler.reconcile()
    assert Worker.objects.filter(deployment__model__name="tiny").count() == 1
    assert not api.calls("POST")
