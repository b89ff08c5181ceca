"""Rendered Deployment/Service manifests: valid Kubernetes objects that run the vLLM launcher's argv.

Schemas are the Kubernetes OpenAPI-derived JSON schemas bundled (offline) by the
``kubernetes-validate`` package, in strict mode, so an unknown or misspelt field fails too.
"""

from __future__ import annotations

import dataclasses

import kubernetes_validate
import pytest

from provisioning.engines.vllm import EngineArgsError, serve_args
from provisioning.k8s import DEFAULT_VLLM_IMAGE, render_manifests
from provisioning.k8s.manifests import pod_engine_spec
from tests.kube.conftest import make_group

K8S_VERSIONS = ["1.37.0", "1.33.0"]


def container_of(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(deployment):
    return {e["name"]: e for e in container_of(deployment)["env"]}


def variants():
    base = make_group()
    return {
        "default": base,
        "minimal": make_group(
            engine=dataclasses.replace(
                base.engine, max_loras=0, max_cpu_loras=None, max_lora_rank=None, tensor_parallel_size=1
            ),
            node_selector={},
            tolerations=(),
            replicas=0,
        ),
        "everything": make_group(
            image="registry.internal/vllm-openai:v0.33.0-patched",
            image_pull_secrets=("regcred",),
            hf_token_secret="hf-token",
            runtime_class_name="nvidia",
            service_account_name="berth-engine",
            cpu_limit="16",
            extra_labels={"team": "ml-platform"},
            engine=dataclasses.replace(
                base.engine, source="/models/llama", task="embedding", extra_args=("--seed", "7")
            ),
        ),
        "no-cache-pvc": make_group(cache_pvc=None),
    }


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", list(variants()))
def test_manifests_validate_against_the_kubernetes_schema(variant, k8s_version):
    for manifest in render_manifests(variants()[variant]):
        kubernetes_validate.validate(manifest, k8s_version, strict=True)


def test_the_schema_check_does_catch_mistakes():
    deployment, _ = render_manifests(make_group())
    container_of(deployment)["readinessProbe"]["httpGet"]["pth"] = "/health"

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)


def test_it_renders_a_deployment_and_a_service_named_for_the_group(group):
    deployment, service = render_manifests(group)

    assert (deployment["kind"], deployment["apiVersion"]) == ("Deployment", "apps/v1")
    assert (service["kind"], service["apiVersion"]) == ("Service", "v1")
    for obj in (deployment, service):
        assert obj["metadata"]["name"] == "llama-3-8b"
        assert obj["metadata"]["namespace"] == "inference"
    assert deployment["spec"]["replicas"] == 2


def test_everything_carries_the_berth_labels(group):
    deployment, service = render_manifests(group)

    for labels in (
        deployment["metadata"]["labels"],
        deployment["spec"]["template"]["metadata"]["labels"],
        service["metadata"]["labels"],
    ):
        assert labels["app.kubernetes.io/managed-by"] == "berth"
        assert labels["berth.dev/deployment"] == "dep_7f3a9c"


def test_selectors_match_the_pod_labels(group):
    deployment, service = render_manifests(group)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"] == selector


def test_the_container_runs_the_vllm_launchers_command_line(group):
    container = container_of(render_manifests(group)[0])

    assert container["image"] == DEFAULT_VLLM_IMAGE == "vllm/vllm-openai:v0.33.0"
    assert container["command"] == ["vllm", "serve"]
    assert container["args"] == serve_args(pod_engine_spec(group))
    args = container["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert args[args.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside the pod
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--download-dir") + 1] == "/models"
    assert "--enable-prefix-caching" in args
    # LoRA as the vLLM launcher sets it: limits from the deployment, adapters loaded at run time.
    assert args[args.index("--max-loras") + 1] == "4"
    assert args[args.index("--max-cpu-loras") + 1] == "16"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    assert "--lora-modules" not in args
    assert env_of(render_manifests(group)[0])["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"


def test_the_image_is_configurable():
    deployment, _ = render_manifests(make_group(image="registry.internal/vllm:v0.33.0"))

    assert container_of(deployment)["image"] == "registry.internal/vllm:v0.33.0"


def test_the_api_key_comes_from_the_secret_and_never_the_manifest(group):
    deployment, _ = render_manifests(make_group(api_key_secret="k-secret", api_key_secret_key="token"))
    container = container_of(deployment)

    assert env_of(deployment)["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "k-secret", "key": "token"}},
    }
    assert "--api-key" not in container["args"]


def test_gpus_come_from_the_resource_limit_not_cuda_visible_devices(group):
    deployment, _ = render_manifests(group)
    resources = container_of(deployment)["resources"]

    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in env_of(deployment)


def test_gpu_count_follows_the_tensor_parallel_size():
    group = make_group()
    tp4 = dataclasses.replace(group, engine=dataclasses.replace(group.engine, tensor_parallel_size=4))

    assert container_of(render_manifests(tp4)[0])["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_it_rejects_a_gpu_count_other_than_the_tp_size():
    with pytest.raises(ValueError, match="must equal tensor_parallel_size=2"):
        render_manifests(make_group(gpus=1))


def test_probes_check_vllm_health_on_the_named_port(group):
    container = container_of(render_manifests(group)[0])

    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Loading a model may take long: the startup probe, not liveness, has to wait for it.
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 1800


def test_the_model_cache_pvc_is_mounted_at_the_download_dir():
    deployment, _ = render_manifests(make_group(cache_pvc="shared-weights", cache_mount_path="/cache"))
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)

    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "shared-weights"}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert container["args"][container["args"].index("--download-dir") + 1] == "/cache"


def test_dev_shm_is_a_memory_volume(group):
    deployment, _ = render_manifests(group)
    pod = deployment["spec"]["template"]["spec"]

    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container_of(deployment)["volumeMounts"]  # noqa: S108


def test_node_selector_and_tolerations_reach_the_pod(group):
    pod = render_manifests(group)[0]["spec"]["template"]["spec"]

    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_service_links_are_off_so_no_vllm_port_variable_is_injected(group):
    assert render_manifests(group)[0]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_service_is_headless_because_the_gateway_picks_workers(group):
    _, service = render_manifests(group)

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_a_local_model_folder_runs_offline():
    group = make_group()
    local = dataclasses.replace(group, engine=dataclasses.replace(group.engine, source="/models/llama"))

    assert env_of(render_manifests(local)[0])["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}


def test_rolling_updates_do_not_ask_for_extra_gpus(group):
    strategy = render_manifests(group)[0]["spec"]["strategy"]

    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Llama_3"}, "DNS label"),
        ({"name": "x" * 64}, "DNS label"),
        ({"namespace": "Team A"}, "namespace"),
        ({"deployment_id": "dep 1"}, "label"),
        ({"replicas": -1}, "negative"),
        ({"api_key_secret": ""}, "api_key_secret"),
    ],
)
def test_it_rejects_invalid_groups(overrides, message):
    with pytest.raises(ValueError, match=message):
        render_manifests(make_group(**overrides))


def test_it_rejects_a_non_vllm_engine():
    group = make_group()

    with pytest.raises(ValueError, match="vLLM pods"):
        render_manifests(dataclasses.replace(group, engine=dataclasses.replace(group.engine, engine="cpu")))


def test_extra_args_cannot_override_what_the_pod_needs():
    group = make_group()
    bad = dataclasses.replace(group, engine=dataclasses.replace(group.engine, extra_args=("--port", "9000")))

    with pytest.raises(EngineArgsError, match="would override --port"):
        render_manifests(bad)
