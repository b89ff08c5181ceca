"""KubernetesBackend against a fake API server: the requests the official client really sends."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from provisioning.k8s import KubernetesBackend, render_manifests
from provisioning.k8s.backend import GroupNotFound, KubernetesBackendError
from tests.kube.conftest import make_group

DEPLOYMENTS = "/apis/apps/v1/namespaces/inference/deployments"
SERVICES = "/api/v1/namespaces/inference/services"
PODS = "/api/v1/namespaces/inference/pods"


def seed_existing(api, group, **changes):
    deployment, service = render_manifests(group)
    deployment["spec"].update(changes)
    api.add("deployments", deployment)
    api.add("services", service)
    return deployment, service


def pod(name, *, ip="10.42.0.7", ready=True, phase="Running", group="llama-3-8b", deleting=False):
    meta = {
        "name": name,
        "namespace": "inference",
        "labels": {"app.kubernetes.io/managed-by": "berth", "berth.dev/group": group},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T23:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": "gpu-node-3",
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.33.0",
                    "ports": [{"name": "http", "containerPort": 8000}],
                }
            ],
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_it_creates_deployment_and_service_when_absent(api, backend, group):
    result = backend.apply(group)

    assert result == {"deployment": "created", "service": "created"}
    assert api.calls() == [
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("POST", DEPLOYMENTS),
        ("GET", f"{SERVICES}/llama-3-8b"),
        ("POST", SERVICES),
    ]
    post = api.requests[1]
    # kubernetes 37 sends JSON bodies without a Content-Type; the API server reads that as JSON.
    assert post.content_type in (None, "application/json")
    assert post.query == {"fieldManager": ["berth"]}
    assert post.body == render_manifests(group)[0]
    assert api.requests[3].body == render_manifests(group)[1]


def test_the_created_deployment_carries_the_engine_args_gpus_and_secret(api, backend, group):
    backend.apply(group)

    body = api.requests[1].body
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert body["spec"]["replicas"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["args"][:3] == ["meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama-3-8b"]
    # Requests carry vLLM's `priority` (their service tier): the pod schedules by it.
    policy = container["args"].index("--scheduling-policy")
    assert container["args"][policy + 1] == "priority"
    assert {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llama-3-8b-engine-key", "key": "api-key"}},
    } in container["env"]


def test_the_created_pod_gets_no_berth_secret_and_no_api_token(api, backend, group, monkeypatch):
    from provisioning.agent import engine_environment

    # Whatever the control plane process holds, the pod is built from the launcher alone.
    monkeypatch.setenv("BERTH_INTERNAL_TOKEN", "internal-token")
    monkeypatch.setenv("SECRET_KEY", "django-secret")
    backend.apply(group)

    pod_spec = api.requests[1].body["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    names = {entry["name"] for entry in container["env"]}
    # the group serves LoRA adapters, so vLLM's runtime load route is switched on as well
    assert names == {"VLLM_API_KEY", "HF_HOME", "VLLM_ALLOW_RUNTIME_LORA_UPDATING"}
    # Besides the key from the Secret, only what the agent's allow-list would pass on as well.
    assert set(engine_environment(dict.fromkeys(names, "x"))) == names - {"VLLM_API_KEY"}
    assert "internal-token" not in str(api.requests[1].body)
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False


def test_it_replaces_an_existing_deployment_at_its_resource_version(api, backend, group):
    seed_existing(api, group, replicas=1)
    seen_rv = api.get("deployments", "inference", "llama-3-8b")["metadata"]["resourceVersion"]

    result = backend.apply(group)

    assert result == {"deployment": "replaced", "service": "replaced"}
    assert api.calls() == [
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("PUT", f"{DEPLOYMENTS}/llama-3-8b"),
        ("GET", f"{SERVICES}/llama-3-8b"),
        ("PUT", f"{SERVICES}/llama-3-8b"),
    ]
    put = api.requests[1].body
    assert put["metadata"]["resourceVersion"] == seen_rv
    assert put["spec"]["replicas"] == 2
    assert api.get("deployments", "inference", "llama-3-8b")["spec"]["replicas"] == 2


def test_it_replaces_when_the_deployment_appears_between_read_and_create(api, backend, group):
    other_writer = render_manifests(group)[0]
    api.inject.append(("POST", "deployments", 409, lambda: api.add("deployments", other_writer)))

    result = backend.apply(group)

    assert result["deployment"] == "replaced"
    assert api.calls()[:4] == [
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("POST", DEPLOYMENTS),
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("PUT", f"{DEPLOYMENTS}/llama-3-8b"),
    ]


def test_it_rereads_and_retries_when_replace_hits_a_conflict(api, backend, group):
    seed_existing(api, group)
    api.inject.append(("PUT", "deployments", 409))

    result = backend.apply(group)

    assert result["deployment"] == "replaced"
    assert api.calls()[:4] == [
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("PUT", f"{DEPLOYMENTS}/llama-3-8b"),
        ("GET", f"{DEPLOYMENTS}/llama-3-8b"),
        ("PUT", f"{DEPLOYMENTS}/llama-3-8b"),
    ]


def test_it_gives_up_when_the_object_keeps_changing(api, backend, group):
    seed_existing(api, group)
    api.inject.extend([("PUT", "deployments", 409)] * 4)

    with pytest.raises(KubernetesBackendError, match="kept changing"):
        backend.apply(group)

    assert len(api.calls("PUT")) == 4


def test_it_refuses_to_overwrite_a_deployment_berth_does_not_manage(api, backend, group):
    deployment, _ = render_manifests(group)
    deployment["metadata"]["labels"] = {"app": "someone-else"}
    api.add("deployments", deployment)

    with pytest.raises(KubernetesBackendError, match="not managed by Berth"):
        backend.apply(group)

    assert api.calls("PUT") == []


def test_it_surfaces_other_api_errors(api, backend, group):
    api.inject.append(("GET", "deployments", 500))

    with pytest.raises(ApiException) as raised:
        backend.apply(group)

    assert raised.value.status == 500


def test_it_scales_through_the_scale_subresource_with_a_merge_patch(api, backend, group):
    seed_existing(api, group)

    replicas = backend.scale("llama-3-8b", 5)

    assert replicas == 5
    patch = api.requests[-1]
    assert (patch.method, patch.path) == ("PATCH", f"{DEPLOYMENTS}/llama-3-8b/scale")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 5}}
    assert api.get("deployments", "inference", "llama-3-8b")["spec"]["replicas"] == 5


def test_it_scales_to_zero(api, backend, group):
    seed_existing(api, group)

    assert backend.scale("llama-3-8b", 0) == 0
    assert api.requests[-1].body == {"spec": {"replicas": 0}}


def test_it_reports_scaling_a_missing_group(api, backend):
    with pytest.raises(GroupNotFound):
        backend.scale("nope", 1)


def test_it_uses_the_namespace_it_is_given(api, backend, group):
    api.add("deployments", render_manifests(make_group(namespace="team-a"))[0])

    backend.scale("llama-3-8b", 3, namespace="team-a")

    assert api.requests[-1].path == "/apis/apps/v1/namespaces/team-a/deployments/llama-3-8b/scale"


def test_it_lists_only_ready_running_pods_as_worker_urls(api, backend):
    api.add("pods", pod("llama-3-8b-abc-2", ip="10.42.1.9"))
    api.add("pods", pod("llama-3-8b-abc-1", ip="10.42.0.7"))
    api.add("pods", pod("llama-3-8b-loading", ready=False))
    api.add("pods", pod("llama-3-8b-pending", phase="Pending", ip=None))
    api.add("pods", pod("llama-3-8b-going", deleting=True))
    api.add("pods", pod("qwen-xyz", group="qwen"))

    workers = backend.ready_workers("llama-3-8b")

    assert [(w.pod, w.url, w.node) for w in workers] == [
        ("llama-3-8b-abc-1", "http://10.42.0.7:8000", "gpu-node-3"),
        ("llama-3-8b-abc-2", "http://10.42.1.9:8000", "gpu-node-3"),
    ]
    listing = api.requests[-1]
    assert (listing.method, listing.path) == ("GET", PODS)
    assert listing.query["labelSelector"] == ["app.kubernetes.io/managed-by=berth,berth.dev/group=llama-3-8b"]


def test_it_brackets_ipv6_pod_addresses(api, backend):
    api.add("pods", pod("llama-3-8b-v6", ip="fd00::17"))

    assert backend.ready_workers("llama-3-8b")[0].url == "http://[fd00::17]:8000"


def test_it_lists_berth_managed_groups_with_their_deployment_ids(api, backend, group):
    seed_existing(api, group)
    foreign, _ = render_manifests(make_group(name="other"))
    foreign["metadata"]["labels"] = {"app": "other"}
    api.add("deployments", foreign)

    assert backend.groups() == {"llama-3-8b": "dep_7f3a9c"}
    assert api.requests[-1].query["labelSelector"] == ["app.kubernetes.io/managed-by=berth"]


def test_it_deletes_deployment_and_service_in_the_background(api, backend, group):
    seed_existing(api, group)

    assert backend.delete("llama-3-8b") is True

    assert api.calls() == [("DELETE", f"{DEPLOYMENTS}/llama-3-8b"), ("DELETE", f"{SERVICES}/llama-3-8b")]
    assert api.requests[0].query["propagationPolicy"] == ["Background"]
    assert api.get("deployments", "inference", "llama-3-8b") is None
    assert api.get("services", "inference", "llama-3-8b") is None


def test_deleting_a_missing_group_is_not_an_error(api, backend):
    assert backend.delete("gone") is False


def test_it_connects_with_a_kubeconfig(tmp_path, api):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
users: [{{name: u, user: {{token: t0k}}}}]
contexts: [{{name: berth, context: {{cluster: c, user: u, namespace: inference}}}}]
current-context: berth
"""
    )
    backend = KubernetesBackend.connect(in_cluster=False, kubeconfig=str(kubeconfig), namespace="inference")

    assert backend.delete("gone") is False
    assert api.calls()[0] == ("DELETE", f"{DEPLOYMENTS}/gone")


def test_it_connects_in_cluster_with_the_service_account(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not checked until a request is made")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    backend = KubernetesBackend.connect(namespace="inference")  # in-cluster picked from the environment

    configuration = backend.apps.api_client.configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.api_key["BearerToken"].lower() == "bearer sa-token"
    assert backend.namespace == "inference"
