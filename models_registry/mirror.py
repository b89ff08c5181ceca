"""The Redis copy of the model registry that the gateway reads (it never queries PostgreSQL).

The layout (``model:<name>``, the ``models`` set, the invalidation messages) is the contract's:
see ``contract``. Signals keep it current whatever edits the registry (admin, API,
``pull_model``, bootstrap) or adds a price; a price scheduled for later is published when it takes
effect by billing's periodic spend check (``billing.spend.republish_prices``). ``resync``
(periodic, and at ``manage.py up``) heals any missed write.

A tenant's LoRA adapter (``LoraAdapter``, once ``ready``) is published like a model under its
served name ``<tenant slug>/<name>``, with the adapter's own price and ``parent`` (the base model's
name) plus what an engine needs to load it: ``adapter_id``, ``adapter_source`` (an absolute
folder, or a Hub repo id), ``adapter_revision`` and ``adapter_rank``, and the manifest recorded when
it became ready: ``manifest_digest`` and ``adapter_manifest`` (its canonical JSON). A plain model's
entry has no ``parent``.
"""

from __future__ import annotations

import json

from berth.redis import get_redis, mirror_write, names
from contract import invalidation
from contract.spend import PERCENT_FIELDS, percent_text, to_micros

PRICE_FIELDS = (
    "price_input_micros",
    "price_output_micros",
    "price_cached_input_micros",
    *PERCENT_FIELDS.values(),
)


def price_fields(model, now=None) -> dict[str, str]:
    """The price in effect ``now`` as the gateway reads it, with the percent billed in each service
    tier (``contract.spend``); empty when the model (or the adapter) has no price (the gateway then
    charges nothing, whatever the tier)."""
    from models_registry.models import Price

    price = Price.objects.in_effect(model, now)
    if price is None:
        return {}
    return {
        "price_input_micros": str(to_micros(price.input_per_million)),
        "price_output_micros": str(to_micros(price.output_per_million)),
        "price_cached_input_micros": str(to_micros(price.cached_input_price)),
        # The effective percent per service tier (the row's own, else BERTH_TIER_PRICE_PERCENT's).
        **{field: percent_text(price.tier_percent(tier)) for tier, field in PERCENT_FIELDS.items()},
    }


def manifest_digest(model) -> str:
    """The digest of the manifest the model's files are verified against; empty without one."""
    from models_registry.models import ModelManifest

    current = ModelManifest.objects.current_for(model)
    return current.digest if current is not None else ""


def entry(model) -> dict[str, str]:
    tenants = sorted(str(pk) for pk in model.allowed_tenants.values_list("pk", flat=True))
    return {
        "served_name": model.name,
        "task": model.task,
        "visibility": model.visibility,
        "tenants": json.dumps(tenants),
        "created": str(int(model.created_at.timestamp())) if model.created_at else "0",
        "owned_by": "berth",
        "context_length": str(model.context_length) if model.context_length else "",
        "tool_call_parser": model.tool_call_parser or "",
        "manifest_digest": manifest_digest(model),
        **price_fields(model),
    }


def adapter_entry(adapter) -> dict[str, str]:
    """A ready adapter as the gateway sees it: a model with a ``parent`` (see the module doc)."""
    from models_registry.constants import Visibility

    base = adapter.base_model
    private = adapter.visibility != Visibility.PUBLIC
    return {
        "served_name": adapter.served_name,
        "task": base.task,
        "visibility": Visibility.PRIVATE if private else Visibility.PUBLIC,
        "tenants": json.dumps([str(adapter.tenant_id)] if private else []),
        "created": str(int(adapter.created_at.timestamp())) if adapter.created_at else "0",
        "owned_by": adapter.tenant.slug,
        "context_length": str(base.context_length) if base.context_length else "",
        **price_fields(adapter),
        "parent": base.name,
        "adapter_id": str(adapter.pk),
        "adapter_source": adapter.engine_source,
        "adapter_revision": adapter.revision if not adapter.local_path else "",
        "adapter_rank": str(adapter.rank or ""),
        "manifest_digest": adapter.manifest_digest or "",
        "adapter_manifest": adapter_manifest(adapter),
    }


def adapter_manifest(adapter) -> str:
    """The adapter's manifest as canonical JSON (``integrity.Manifest``), which a CPU engine
    verifies the folder against before loading it; empty without one."""
    if not adapter.manifest_digest:
        return ""
    from integrity import Manifest

    manifest = Manifest.from_dict(
        {"source": adapter.source, "revision": adapter.manifest_revision, "files": adapter.manifest_files}
    )
    return manifest.canonical_json().decode()


def publish_adapter(adapter) -> bool:
    name = adapter.served_name

    def write(pipe):
        pipe.delete(names().model(name))
        pipe.hset(names().model(name), mapping=adapter_entry(adapter))
        pipe.sadd(names().models(), name)

    return mirror_write(write, invalidate=invalidation.model(name), what=f"adapter {name}")


def publish_model(model) -> bool:
    def write(pipe):
        pipe.delete(names().model(model.name))
        pipe.hset(names().model(model.name), mapping=entry(model))
        pipe.sadd(names().models(), model.name)

    return mirror_write(write, invalidate=invalidation.model(model.name), what=f"model {model.name}")


def unpublish_model(name: str) -> bool:
    def write(pipe):
        pipe.delete(names().model(name))
        pipe.srem(names().models(), name)

    return mirror_write(write, invalidate=invalidation.model(name), what=f"model {name}")


def published_adapters():
    """The adapters the mirror holds: the ready ones."""
    from models_registry.models import LoraAdapter

    return LoraAdapter.objects.ready().select_related("tenant", "base_model")


def resync() -> dict[str, int]:
    from models_registry.models import Model

    models = list(Model.objects.prefetch_related("allowed_tenants"))
    adapters = list(published_adapters())
    current = {model.name for model in models} | {adapter.served_name for adapter in adapters}
    for model in models:
        publish_model(model)
    for adapter in adapters:
        publish_adapter(adapter)
    client = get_redis()
    stale = {name for name in client.smembers(names().models()) if name not in current}
    for name in stale:
        unpublish_model(name)
    return {"written": len(models) + len(adapters), "removed": len(stale)}
