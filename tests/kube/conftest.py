"""A fake API server on 127.0.0.1 and a backend pointed at it through the official client."""

from __future__ import annotations

import pytest
from kubernetes import client

from provisioning.engines.base import EngineSpec
from provisioning.k8s import GroupSpec, KubernetesBackend
from tests.kube.fake_apiserver import FakeApiServer, serve


def make_group(**overrides) -> GroupSpec:
    engine = EngineSpec(
        engine="vllm",
        served_name="llama-3-8b",
        source="meta-llama/Llama-3.1-8B-Instruct",
        task="chat",
        host="",
        port=0,
        api_key="",
        tensor_parallel_size=2,
        max_model_len=16384,
        enable_prefix_caching=True,
        max_loras=4,
        max_cpu_loras=16,
        max_lora_rank=32,
    )
    fields = {
        "name": "llama-3-8b",
        "deployment_id": "dep_7f3a9c",
        "engine": engine,
        "api_key_secret": "llama-3-8b-engine-key",
        "namespace": "inference",
        "replicas": 2,
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    }
    fields.update(overrides)
    return GroupSpec(**fields)


@pytest.fixture
def group() -> GroupSpec:
    return make_group()


@pytest.fixture
def api():
    fake = FakeApiServer()
    server, url = serve(fake)
    fake.url = url
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def backend(api) -> KubernetesBackend:
    configuration = client.Configuration(host=api.url)
    api_client = client.ApiClient(configuration)
    yield KubernetesBackend(api_client, namespace="inference")
    api_client.close()
