"""Kubernetes provisioner backend: each worker group becomes a Deployment and a Service of vLLM pods.

``render_manifests`` turns a ``GroupSpec`` into plain manifest dicts (no cluster needed);
``KubernetesBackend`` applies, scales, lists and deletes them through the official client.
"""

from provisioning.k8s.backend import KubernetesBackend, WorkerEndpoint
from provisioning.k8s.manifests import DEFAULT_VLLM_IMAGE, GroupSpec, render_manifests

__all__ = ["DEFAULT_VLLM_IMAGE", "GroupSpec", "KubernetesBackend", "WorkerEndpoint", "render_manifests"]
