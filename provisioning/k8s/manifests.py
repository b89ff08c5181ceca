"""Deployment + Service manifests for one worker group (the replicas of one model deployment).

The pod runs the exact command line of the vLLM launcher (``provisioning.engines.vllm``): the same
flags a node agent would run, with three differences that belong to Kubernetes:

* no ``CUDA_VISIBLE_DEVICES``: the NVIDIA device plugin exposes only the pod's
  ``nvidia.com/gpu`` devices, so the GPU count is the resource limit (= tensor-parallel size);
* the engine key comes from a Secret (``env.valueFrom.secretKeyRef``), never the manifest, and
  the container's environment is only what the launcher sets (no Berth setting reaches the pod);
* the weights land on a PersistentVolumeClaim mounted at ``--download-dir``, so a rescheduled
  pod does not download them again;
* with a manifest (``GroupSpec.manifest_json``), an init container of the Berth image runs
  ``python -m integrity verify`` before the engine container starts: for a Hub model it downloads
  the pinned snapshot into ``<cache>/verified/<digest>`` and the engine serves that folder; a
  file that does not match fails the init container (the pod never serves, its log names the file).

The Service is headless: the gateway balances over individual workers itself (least outstanding
work, prefix affinity), so it needs the pod addresses, not a virtual IP that would balance blindly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from provisioning.engines.base import EngineSpec
from provisioning.engines.vllm import VLLM_VERSION, serve_args, serve_env

DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
MANAGED_BY = "berth"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "berth.dev/deployment"
LABEL_GROUP = "berth.dev/group"
CONTAINER_NAME = "vllm"
PORT_NAME = "http"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035: Service names
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class GroupSpec:
    """What the Kubernetes backend needs for one group; the Deployment model maps onto this.

    ``engine`` is the template every replica runs. Its ``host``, ``port``, ``api_key``,
    ``gpu_indices`` and ``download_dir`` are replaced here: pods listen on ``0.0.0.0:port``,
    read the key from ``api_key_secret``, get GPUs from the device plugin and cache weights on
    ``cache_pvc``.
    """

    name: str  # Deployment and Service name: a DNS label, at most 63 characters
    deployment_id: str  # Berth's public deployment id, as label berth.dev/deployment
    engine: EngineSpec
    api_key_secret: str  # Secret holding the engine API key the gateway sends
    api_key_secret_key: str = "api-key"  # noqa: S105 - the key inside that Secret, not a secret
    namespace: str = "berth"
    replicas: int = 1
    image: str = DEFAULT_VLLM_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    gpus: int | None = None  # per replica; defaults to, and must equal, the TP size
    gpu_resource: str = "nvidia.com/gpu"
    port: int = 8000
    cache_pvc: str | None = "berth-model-cache"  # None: an emptyDir (weights lost with the pod)
    cache_mount_path: str = "/models"
    hf_token_secret: str | None = None  # Secret with key "token", for gated Hub models
    cpu_request: str = "4"
    memory_request: str = "32Gi"
    cpu_limit: str | None = None  # None: no CPU limit (throttling slows the scheduler loop)
    memory_limit: str | None = "64Gi"
    shm_size: str = "16Gi"  # /dev/shm for NCCL and tensor-parallel workers
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()  # as in a pod spec
    runtime_class_name: str | None = None  # e.g. "nvidia" where the GPU runtime is not the default
    service_account_name: str | None = None
    startup_timeout_s: int = 1800  # loading and compiling a big model takes minutes
    extra_labels: dict[str, str] = field(default_factory=dict)
    manifest_json: str | None = None  # the weights' manifest (canonical JSON); None: unverified
    manifest_digest: str = ""  # its sha256:<hex>, which the init container insists on
    verify_image: str = "berth"  # the Berth image: it carries ``python -m integrity``
    # A required model-signing signature (integrity.signing): "key" with the PEM, or "sigstore".
    signature: str = ""
    signature_public_key: str = ""
    signature_identity: str = ""
    signature_issuer: str = ""

    @property
    def gpu_count(self) -> int:
        return self.gpus if self.gpus is not None else self.engine.tensor_parallel_size


def labels_for(group: GroupSpec) -> dict[str, str]:
    return {
        **group.extra_labels,
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": group.name,
        "app.kubernetes.io/component": "engine",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: group.deployment_id,
        LABEL_GROUP: group.name,
    }


def selector_for(name: str) -> dict[str, str]:
    # Deployment selectors are immutable: keep them to labels that never change for a group.
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_GROUP: name}


def label_selector(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_for(name).items())


VERIFY_CONTAINER_NAME = "verify-weights"


def verified_folder(group: GroupSpec) -> str | None:
    """Where the init container puts (a Hub model) or finds (a local folder) the verified weights."""
    if not group.manifest_json:
        return None
    if group.engine.source.startswith("/"):
        return group.engine.source
    return f"{group.cache_mount_path}/verified/{group.manifest_digest.removeprefix('sha256:')[:32]}"


def pod_engine_spec(group: GroupSpec) -> EngineSpec:
    spec = dataclasses.replace(
        group.engine,
        host="0.0.0.0",  # noqa: S104 - the pod's own network namespace
        port=group.port,
        api_key="",  # from the Secret, see container env
        gpu_indices=(),
        download_dir=group.cache_mount_path,
    )
    folder = verified_folder(group)
    if folder is not None:
        # Exactly the files the init container verified, not whatever the Hub serves by then.
        spec = dataclasses.replace(spec, source=folder, revision=None)
    return spec


def render_verify_container(group: GroupSpec) -> dict[str, Any] | None:
    """The init container that fetches (Hub) and verifies the weights against the manifest."""
    folder = verified_folder(group)
    if folder is None:
        return None
    command = ["python", "-m", "integrity", "verify", folder, "--manifest-env", "BERTH_MANIFEST"]
    if group.manifest_digest:
        command += ["--digest", group.manifest_digest]
    if not group.engine.source.startswith("/"):
        command.append("--fetch")
    env: list[dict[str, Any]] = [
        {"name": "BERTH_MANIFEST", "value": group.manifest_json},
        {"name": "HF_HOME", "value": f"{group.cache_mount_path}/.hf-home"},
    ]
    if group.signature == "key":
        command += ["--public-key-env", "BERTH_SIGNATURE_KEY"]
        env.append({"name": "BERTH_SIGNATURE_KEY", "value": group.signature_public_key})
    elif group.signature == "sigstore":  # needs Fulcio, Rekor and the TUF root reachable from the pod
        command += [
            "--sigstore-identity",
            group.signature_identity,
            "--sigstore-issuer",
            group.signature_issuer,
        ]
    if group.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": group.hf_token_secret, "key": "token"}},
            }
        )
    return {
        "name": VERIFY_CONTAINER_NAME,
        "image": group.verify_image,
        "imagePullPolicy": group.image_pull_policy,
        "command": command,
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [{"name": "model-cache", "mountPath": group.cache_mount_path}],
    }


def render_manifests(group: GroupSpec, *, vllm_bin: str = "vllm") -> list[dict[str, Any]]:
    """The Deployment and the Service for ``group``, as API-ready dicts."""
    _validate(group)
    return [render_deployment(group, vllm_bin=vllm_bin), render_service(group)]


def render_deployment(group: GroupSpec, *, vllm_bin: str = "vllm") -> dict[str, Any]:
    engine = pod_engine_spec(group)
    labels = labels_for(group)
    probe = {"httpGet": {"path": "/health", "port": PORT_NAME}, "timeoutSeconds": 5}
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": group.cpu_request, "memory": group.memory_request},
        "limits": {},
    }
    if group.gpu_count:
        resources["requests"][group.gpu_resource] = str(group.gpu_count)
        resources["limits"][group.gpu_resource] = str(group.gpu_count)
    if group.cpu_limit:
        resources["limits"]["cpu"] = group.cpu_limit
    if group.memory_limit:
        resources["limits"]["memory"] = group.memory_limit

    env = [{"name": k, "value": v} for k, v in sorted(serve_env(engine, include_api_key=False).items())]
    env.append(
        {
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": group.api_key_secret, "key": group.api_key_secret_key}},
        }
    )
    # Tokenizer and config files go to the HF cache, not --download-dir: keep them on the volume too.
    env.append({"name": "HF_HOME", "value": f"{group.cache_mount_path}/.hf-home"})
    if group.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": group.hf_token_secret, "key": "token"}},
            }
        )

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": group.image,
        "imagePullPolicy": group.image_pull_policy,
        "command": [vllm_bin, "serve"],
        "args": serve_args(engine),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": group.port, "protocol": "TCP"}],
        "startupProbe": {
            **probe,
            "periodSeconds": 10,
            "failureThreshold": max(1, group.startup_timeout_s // 10),
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
        "resources": resources,
        "volumeMounts": [
            {"name": "model-cache", "mountPath": group.cache_mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - a memory volume, not a temp file
        ],
    }
    cache_volume: dict[str, Any] = (
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": group.cache_pvc}}
        if group.cache_pvc
        else {"name": "model-cache", "emptyDir": {}}
    )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            cache_volume,
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": group.shm_size}},
        ],
        # Service links would inject e.g. VLLM_PORT=tcp://... for a Service named "vllm", and vLLM
        # reads VLLM_PORT as its own setting.
        "enableServiceLinks": False,
        # The engine never calls the Kubernetes API: no service-account token in its filesystem.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 60,
    }
    verify = render_verify_container(group)
    if verify is not None:
        pod_spec["initContainers"] = [verify]
    if group.node_selector:
        pod_spec["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in group.tolerations]
    if group.runtime_class_name:
        pod_spec["runtimeClassName"] = group.runtime_class_name
    if group.service_account_name:
        pod_spec["serviceAccountName"] = group.service_account_name
    if group.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in group.image_pull_secrets]

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": group.name, "namespace": group.namespace, "labels": labels},
        "spec": {
            "replicas": group.replicas,
            "selector": {"matchLabels": selector_for(group.name)},
            # GPUs are scarce: replace pods one at a time instead of asking for surge GPUs.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER_NAME},
                },
                "spec": pod_spec,
            },
        },
    }


def render_service(group: GroupSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": group.name, "namespace": group.namespace, "labels": labels_for(group)},
        "spec": {
            "clusterIP": "None",
            "selector": selector_for(group.name),
            "ports": [{"name": PORT_NAME, "port": group.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def _validate(group: GroupSpec) -> None:
    if len(group.name) > 63 or not _DNS_LABEL.match(group.name):
        raise ValueError(f"group name {group.name!r} must be a DNS label (a-z, 0-9, '-', at most 63)")
    if len(group.namespace) > 63 or not _DNS_LABEL.match(group.namespace):
        raise ValueError(f"namespace {group.namespace!r} must be a DNS label")
    for key, value in {LABEL_DEPLOYMENT: group.deployment_id, **group.extra_labels}.items():
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ValueError(f"label {key}={value!r} is not a valid label value")
    if group.replicas < 0:
        raise ValueError("replicas cannot be negative")
    if group.engine.engine != "vllm":
        raise ValueError(f"the Kubernetes backend runs vLLM pods, not engine={group.engine.engine!r}")
    if group.gpu_count != group.engine.tensor_parallel_size:
        raise ValueError(
            f"gpus={group.gpu_count} per replica must equal tensor_parallel_size="
            f"{group.engine.tensor_parallel_size}"
        )
    if not group.api_key_secret:
        raise ValueError("api_key_secret is required: workers never run without a key")
