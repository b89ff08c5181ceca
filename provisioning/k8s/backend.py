"""Apply, scale, list and delete worker groups through the official Kubernetes client.

Every call goes to ``AppsV1Api``/``CoreV1Api`` on one ``ApiClient``, so the same code runs
in-cluster (service account), from a kubeconfig, or against a test server (``Configuration(host=...)``).
Apply is read-then-create-or-replace: a 404 creates, an existing object is replaced at the
``resourceVersion`` just read, and a 409 (someone created or changed it in between) reads again.
Objects with the group's name that Berth does not manage are never overwritten.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from provisioning.k8s.manifests import (
    CONTAINER_NAME,
    LABEL_DEPLOYMENT,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PORT_NAME,
    GroupSpec,
    label_selector,
    render_manifests,
)

logger = logging.getLogger(__name__)

FIELD_MANAGER = "berth"
MERGE_PATCH = "application/merge-patch+json"


class KubernetesBackendError(RuntimeError):
    """A cluster state the backend will not paper over."""


class GroupNotFound(KubernetesBackendError, LookupError):
    pass


@dataclass(frozen=True)
class WorkerEndpoint:
    """A ready engine pod, as the gateway routes to it."""

    pod: str
    url: str  # http://<pod IP>:<port>
    node: str | None


class KubernetesBackend:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str = "berth",
        vllm_bin: str = "vllm",
        conflict_retries: int = 3,
    ):
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.vllm_bin = vllm_bin
        self.conflict_retries = conflict_retries

    @classmethod
    def connect(
        cls,
        *,
        in_cluster: bool | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        **kwargs: Any,
    ) -> KubernetesBackend:
        """In-cluster config (service account) or a kubeconfig; ``None`` picks in-cluster when
        ``KUBERNETES_SERVICE_HOST`` is set. No global client configuration is touched."""
        if in_cluster is None:
            in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
        else:
            api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        return cls(api_client, **kwargs)

    # -- apply ---------------------------------------------------------------------------------

    def apply(self, group: GroupSpec) -> dict[str, str]:
        """Create or replace the group's Deployment and Service; returns what happened to each."""
        deployment, service = render_manifests(group, vllm_bin=self.vllm_bin)
        return {
            "deployment": self._apply(
                deployment,
                read=self.apps.read_namespaced_deployment,
                create=self.apps.create_namespaced_deployment,
                replace=self.apps.replace_namespaced_deployment,
            ),
            "service": self._apply(
                service,
                read=self.core.read_namespaced_service,
                create=self.core.create_namespaced_service,
                replace=self.core.replace_namespaced_service,
            ),
        }

    def _apply(
        self,
        manifest: dict[str, Any],
        *,
        read: Callable[..., Any],
        create: Callable[..., Any],
        replace: Callable[..., Any],
    ) -> str:
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"]["namespace"]
        kind = manifest["kind"]
        for _ in range(self.conflict_retries + 1):
            try:
                current = read(name=name, namespace=namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                try:
                    create(namespace=namespace, body=manifest, field_manager=FIELD_MANAGER)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    logger.info("%s %s/%s appeared while creating it; replacing", kind, namespace, name)
                    continue
                logger.info("created %s %s/%s", kind, namespace, name)
                return "created"

            labels = current.metadata.labels or {}
            if labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
                raise KubernetesBackendError(
                    f"{kind} {namespace}/{name} exists and is not managed by Berth; not replacing it"
                )
            body = copy.deepcopy(manifest)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            try:
                replace(name=name, namespace=namespace, body=body, field_manager=FIELD_MANAGER)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                logger.info(
                    "%s %s/%s changed while replacing it (%s); retrying", kind, namespace, name, exc.status
                )
                continue
            logger.info("replaced %s %s/%s", kind, namespace, name)
            return "replaced"
        raise KubernetesBackendError(
            f"{kind} {namespace}/{name} kept changing; gave up after {self.conflict_retries + 1} tries"
        )

    # -- scale, list, delete ------------------------------------------------------------------

    def scale(self, name: str, replicas: int, *, namespace: str | None = None) -> int:
        """Set the group's replica count through the Deployment's scale subresource."""
        if replicas < 0:
            raise ValueError("replicas cannot be negative")
        try:
            scale = self.apps.patch_namespaced_deployment_scale(
                name=name,
                namespace=namespace or self.namespace,
                body={"spec": {"replicas": replicas}},
                field_manager=FIELD_MANAGER,
                # Without this the client picks JSON Patch and, for a dict body, falls back to a
                # strategic merge patch; say plainly that this is a merge patch of spec.replicas.
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise GroupNotFound(f"no worker group {name!r} in {namespace or self.namespace}") from exc
            raise
        return scale.spec.replicas

    def ready_workers(self, name: str, *, namespace: str | None = None) -> list[WorkerEndpoint]:
        """Pods of the group whose readiness probe (``GET /health``) passes, as worker URLs."""
        pods = self.core.list_namespaced_pod(
            namespace=namespace or self.namespace, label_selector=label_selector(name)
        )
        workers = []
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is not None or not pod.status or not pod.status.pod_ip:
                continue
            if pod.status.phase != "Running" or not _is_ready(pod):
                continue
            host = pod.status.pod_ip
            if ":" in host:  # IPv6
                host = f"[{host}]"
            url = f"http://{host}:{_engine_port(pod)}"
            workers.append(WorkerEndpoint(pod=pod.metadata.name, url=url, node=pod.spec.node_name))
        return sorted(workers, key=lambda w: w.pod)

    def groups(self, *, namespace: str | None = None) -> dict[str, str | None]:
        """Berth-managed groups in the namespace: name -> Berth deployment id."""
        listing = self.apps.list_namespaced_deployment(
            namespace=namespace or self.namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        )
        return {
            d.metadata.labels.get(LABEL_GROUP, d.metadata.name): d.metadata.labels.get(LABEL_DEPLOYMENT)
            for d in listing.items
        }

    def delete(self, name: str, *, namespace: str | None = None) -> bool:
        """Delete the group's Deployment (its pods go with it) and Service; False if neither existed."""
        namespace = namespace or self.namespace
        deleted = False
        for remove in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                remove(name=name, namespace=namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                deleted = True
        return deleted


def _is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def _engine_port(pod: Any) -> int:
    for container in pod.spec.containers:
        if container.name == CONTAINER_NAME:
            for port in container.ports or ():
                if port.name == PORT_NAME:
                    return port.container_port
    return 8000
