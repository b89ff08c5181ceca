"""The Redis copy of each tenant's guardrails that the gateway reads (``guardrails:<tenant id>``).

One hash per tenant: ``policies`` (JSON list of the policies in force, in the shape
``gateway.guardrails.compile_policies`` reads) and ``log_content`` (``1`` or ``0``). A tenant
with no policy in force and content logging off has no hash (the gateway then does nothing for
it). Written after the database commit, announced on the invalidation channel
(``guardrails:<tenant id>``); the periodic ``resync`` repairs what a Redis outage lost.
"""

from __future__ import annotations

import json
import logging

from berth.redis import get_redis, mirror_write, names
from contract import invalidation

logger = logging.getLogger(__name__)
RESYNC_BATCH = 500


def policies_in_force(tenant_id, *, defaults: list | None = None) -> list:
    """The tenant's enabled policies, or the platform defaults when it has no tenant-wide one."""
    from guardrails.models import GuardrailPolicy

    own = list(GuardrailPolicy.objects.filter(tenant_id=tenant_id, enabled=True))
    if any(policy.api_key_id is None for policy in own):
        return own
    if defaults is None:
        defaults = list(GuardrailPolicy.objects.defaults().filter(enabled=True))
    return own + defaults


def entry(tenant_id, *, defaults: list | None = None) -> dict[str, str] | None:
    from guardrails.models import ContentGovernance

    policies = [policy.entry() for policy in policies_in_force(tenant_id, defaults=defaults)]
    governance = ContentGovernance.objects.filter(tenant_id=tenant_id).first()
    log_content = bool(governance and governance.log_content)
    if not policies and not log_content:
        return None
    return {"policies": json.dumps(policies), "log_content": "1" if log_content else "0"}


def _write(pipe, tenant_id, value: dict[str, str] | None) -> None:
    name = names().guardrails(tenant_id)
    pipe.delete(name)
    if value is not None:
        pipe.hset(name, mapping=value)


def publish_tenant(tenant_id) -> bool:
    value = entry(tenant_id)
    return mirror_write(
        lambda pipe: _write(pipe, tenant_id, value),
        invalidate=invalidation.guardrails(tenant_id),
        what=f"guardrails of tenant {tenant_id}",
    )


def unpublish_tenant(tenant_id) -> bool:
    return mirror_write(
        lambda pipe: pipe.delete(names().guardrails(tenant_id)),
        invalidate=invalidation.guardrails(tenant_id),
        what=f"guardrails of tenant {tenant_id}",
    )


def resync() -> dict[str, int]:
    """Make every tenant's hash equal to PostgreSQL and drop hashes of tenants without one.

    Also the way a platform default reaches every tenant after staff change it.
    """
    from guardrails.models import GuardrailPolicy
    from tenants.models import Tenant

    client = get_redis()
    defaults = list(GuardrailPolicy.objects.defaults().filter(enabled=True))
    tenant_ids = [str(pk) for pk in Tenant.objects.values_list("pk", flat=True)]
    written = 0
    wanted = set()
    for first in range(0, len(tenant_ids), RESYNC_BATCH):
        batch = tenant_ids[first : first + RESYNC_BATCH]
        with client.pipeline(transaction=True) as pipe:
            for tenant_id in batch:
                value = entry(tenant_id, defaults=defaults)
                _write(pipe, tenant_id, value)
                pipe.publish(names().invalidate_channel(), invalidation.guardrails(tenant_id))
                if value is not None:
                    written += 1
                    wanted.add(names().guardrails(tenant_id))
            pipe.execute()
    removed = 0
    for name in client.scan_iter(match=names().guardrails_pattern(), count=1000):
        tenant_id = names().guardrails_tenant_of(name)
        if name not in wanted and tenant_id not in tenant_ids:
            unpublish_tenant(tenant_id)
            removed += 1
    return {"written": written, "removed": removed}
