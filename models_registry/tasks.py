"""Celery tasks for the model registry."""

from celery import shared_task

from models_registry import mirror


@shared_task(name="models_registry.tasks.resync_model_mirror")
def resync_model_mirror() -> dict[str, int]:
    """Safety net: make the Redis copy of the registry equal to PostgreSQL; restart the fetch of
    adapters whose task was lost."""
    from models_registry import adapters

    result = mirror.resync()
    result["adapter_pulls_retried"] = adapters.retry_stalled_pulls()
    return result


@shared_task(name="models_registry.tasks.pull_adapter")
def pull_adapter(adapter_id: str) -> str:
    """Fetch a tenant's LoRA adapter from the Hub or a URL, check it, mark it ready or failed."""
    from models_registry import adapters

    adapter = adapters.pull(adapter_id=adapter_id)
    return adapter.status if adapter else "missing"
