"""GPU pool, node agents, engine workers, reconciler and autoscaler (provisioning issue)."""
