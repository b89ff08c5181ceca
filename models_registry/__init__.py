"""The model registry: models, deployments, prices and LoRA adapters (provisioning issue)."""
