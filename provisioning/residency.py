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
