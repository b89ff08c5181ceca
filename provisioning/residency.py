"""Which data-residency label a deployment's replicas need, from its tenants' requirements.

A tenant that sets ``data_residency`` (console settings, owners only) gets its private models
served only on nodes labelled with it; public models are shared by every tenant and go anywhere.
The reconciler passes the result to ``provisioning.placement`` (pure, no ORM).
"""

from __future__ import annotations

from models_registry.constants import Visibility
from models_registry.models import Deployment


def required_residencies(deployment: Deployment) -> tuple[str, ...]:
    """The distinct labels the tenants of a private model require (empty for a public model)."""
    model = deployment.model
    if model.visibility != Visibility.PRIVATE:
        return ()
    labels = model.allowed_tenants.exclude(data_residency="").values_list("data_residency", flat=True)
    return tuple(sorted(set(labels)))


def retire_misplaced(deployments, workers: list, nodes: dict, stats) -> None:
    """Drain live replicas of private models that sit on a node their tenants no longer accept.

    A tenant that sets or changes its requirement expects its private models to leave other nodes,
    not only new replicas to avoid them: each such worker is retired (pending ones stop, the others
    drain) and the desired replica count brings a replacement that placement puts on a matching
    node, or leaves pending with the reason.
    """
    from provisioning import operations
    from provisioning.constants import LIVE_STATES

    by_deployment: dict = {}
    for worker in workers:
        if worker.state in LIVE_STATES and worker.node_id:
            by_deployment.setdefault(worker.deployment_id, []).append(worker)
    for deployment in deployments:
        if deployment.pk not in by_deployment:
            continue
        required = required_residencies(deployment)
        if not required:
            continue
        for worker in by_deployment[deployment.pk]:
            node = nodes.get(worker.node_id)
            if node is None or (len(required) == 1 and node.residency == required[0]):
                continue
            reason = f"node {node.name} lacks the data residency its tenants require ({', '.join(required)})"
            if operations.retire(worker=worker, actor=None, reason=reason):
                stats["residency_moved"] += 1
