"""The Redis copy of the model registry that the gateway reads (it never queries PostgreSQL).

Layout (under ``settings.REDIS_PREFIX``), read by ``gateway.routing``:

* ``model:<public name>`` — hash: ``served_name`` (the engine's ``--served-model-name``, which
  Berth sets to the public name), ``task``, ``visibility`` (``public`` | ``private``), ``tenants``
  (JSON list of tenant ids allowed to use a private model), ``created`` (epoch seconds),
  ``owned_by``, ``context_length`` (tokens, when the registry names it: the gateway reserves it
  per choice for a request without ``max_tokens``). A model without this hash does not exist for
  the gateway. With a price in effect, ``price_input_micros`` and ``price_output_micros``: per
  million tokens, in micro-units of the billing currency (gateway/spend.py), what the gateway adds
  to the tenant's spend counter.
* ``models`` — set of every model name (the gateway filters it per tenant for ``GET /v1/models``).
* channel ``invalidate`` — ``model:<name>`` is published on every change.

Signals keep it current whatever edits the registry (admin, API, ``pull_model``, bootstrap) or
adds a price; a price scheduled for later is published when it takes effect by billing's periodic
spend check (``billing.spend.republish_prices``). ``resync`` (periodic, and at ``manage.py up``)
heals any missed write.
"""

from __future__ import annotations

import json

from berth.redis import get_redis, mirror_write, rkey
from gateway.spend import to_micros

PRICE_FIELDS = ("price_input_micros", "price_output_micros")


def price_fields(model, now=None) -> dict[str, str]:
    """The price in effect ``now`` as the gateway reads it; empty when the model has no price."""
    from models_registry.models import Price

    price = Price.objects.in_effect(model, now)
    if price is None:
        return {}
    return {
        "price_input_micros": str(to_micros(price.input_per_million)),
        "price_output_micros": str(to_micros(price.output_per_million)),
    }


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
        **price_fields(model),
    }


def publish_model(model) -> bool:
    def write(pipe):
        pipe.delete(rkey("model", model.name))
        pipe.hset(rkey("model", model.name), mapping=entry(model))
        pipe.sadd(rkey("models"), model.name)

    return mirror_write(write, invalidate=f"model:{model.name}", what=f"model {model.name}")


def unpublish_model(name: str) -> bool:
    def write(pipe):
        pipe.delete(rkey("model", name))
        pipe.srem(rkey("models"), name)

    return mirror_write(write, invalidate=f"model:{name}", what=f"model {name}")


def resync() -> dict[str, int]:
    from models_registry.models import Model

    models = list(Model.objects.prefetch_related("allowed_tenants"))
    names = {model.name for model in models}
    for model in models:
        publish_model(model)
    client = get_redis()
    stale = {name for name in client.smembers(rkey("models")) if name not in names}
    for name in stale:
        unpublish_model(name)
    return {"written": len(models), "removed": len(stale)}
