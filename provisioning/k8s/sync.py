"""The reconciler's Kubernetes path: vLLM deployments as Deployment + Service groups.

With ``BERTH_PROVISIONER=kubernetes`` every vLLM Deployment of the registry becomes one worker
group in ``BERTH_K8S_NAMESPACE`` (``provisioning.k8s.render_manifests``), with ``replicas`` = its desired
replicas; the autoscaler moves that number as it does for local workers, and the cluster's
scheduler plays the part of placement (``nvidia.com/gpu`` = tensor-parallel size, all on one
node, as a local replica gets its N GPUs on one node). Groups of deleted deployments are deleted.
Ready pods (their ``/health`` readiness probe passes) are returned as routing-table entries, so the
gateway routes to pods exactly as to local workers.

Every engine pod reads one shared engine key from the Secret ``BERTH_K8S_ENGINE_SECRET`` (key
``api-key``), which the operator creates with the manifests; the control plane knows the same
value as ``BERTH_K8S_ENGINE_API_KEY`` and hands it to the gateway through the routing table. So
the provisioner needs no access to Secrets: only Deployments and Services in one namespace.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

from django.conf import settings

from models_registry.constants import Engine
from provisioning.engines.base import EngineSpec
from provisioning.k8s.backend import KubernetesBackend
from provisioning.k8s.manifests import GroupSpec

logger = logging.getLogger(__name__)
ENGINE_PORT = 8000


def group_name(deployment) -> str:
    """A DNS label unique per deployment: ``<model name>-<first 8 of the id>``."""
    base = re.sub(r"[^a-z0-9-]+", "-", deployment.model.name.lower()).strip("-")[:50] or "model"
    if not base[0].isalpha():
        base = f"m-{base}"[:50]
    return f"{base}-{str(deployment.pk)[:8]}"


def group_for(deployment) -> GroupSpec:
    model = deployment.model
    engine = EngineSpec(
        engine="vllm",
        served_name=model.name,
        source=model.source,
        task=model.task,
        host="0.0.0.0",  # noqa: S104 - inside the pod; the headless Service is cluster-internal
        port=ENGINE_PORT,
        api_key="",
        revision=model.revision or None,
        tensor_parallel_size=model.tensor_parallel_size,
        max_model_len=model.context_length,
        dtype=model.dtype or None,
        quantization=model.quantization or None,
        extra_args=tuple(model.engine_args or ()),
        tool_call_parser=model.tool_call_parser or None,
        reasoning_parser=model.reasoning_parser or None,
        # LoRA as on a node agent (provisioning.agent.engine_spec): limits only, adapters at run time.
        max_loras=deployment.max_loras,
        max_cpu_loras=deployment.max_cpu_loras if deployment.max_loras else None,
        max_lora_rank=deployment.max_lora_rank if deployment.max_loras else None,
    )
    return GroupSpec(
        name=group_name(deployment),
        deployment_id=str(deployment.pk),
        engine=engine,
        api_key_secret=settings.K8S_ENGINE_SECRET,
        namespace=settings.K8S_NAMESPACE,
        replicas=deployment.desired_replicas,
        image=settings.K8S_VLLM_IMAGE,
        cache_pvc=settings.K8S_CACHE_PVC or None,
        **_manifest_fields(model),
    )


def _manifest_fields(model) -> dict[str, str]:
    """The model's current manifest for the pod's verifying init container (none: unverified)."""
    from models_registry.models import ModelManifest

    current = ModelManifest.objects.current_for(model)
    if current is None:
        return {}
    return {
        "manifest_json": current.as_manifest().canonical_json().decode(),
        "manifest_digest": current.digest,
        "verify_image": settings.K8S_BERTH_IMAGE,
        "signature": model.signature,
        "signature_public_key": model.signature_public_key,
        "signature_identity": model.signature_identity,
        "signature_issuer": model.signature_issuer,
    }


def connect() -> KubernetesBackend:
    return KubernetesBackend.connect(namespace=settings.K8S_NAMESPACE)


def sync(deployments, stats: Counter, backend: KubernetesBackend | None = None) -> dict[str, dict[str, str]]:
    """Apply every vLLM deployment's group, delete orphaned groups; the routing entries of ready pods."""
    backend = backend or connect()
    wanted = {group_name(d): d for d in deployments if d.engine == Engine.VLLM}
    table: dict[str, dict[str, str]] = {}
    for name, deployment in wanted.items():
        backend.apply(group_for(deployment))
        stats["k8s_applied"] += 1
        for pod in backend.ready_workers(name):
            table.setdefault(deployment.model.name, {})[pod.pod] = json.dumps(
                {
                    "worker_id": pod.pod,
                    "url": pod.url,
                    "api_key": settings.K8S_ENGINE_API_KEY or "",
                    "node": pod.node or "",
                    "deployment_id": str(deployment.pk),
                    "model": deployment.model.name,
                }
            )
            stats["k8s_ready"] += 1
    for name in backend.groups():
        if name not in wanted:
            backend.delete(name)
            stats["k8s_deleted"] += 1
    return table
