"""Creating, changing and deleting guardrail policies and a tenant's content settings.

Each change is validated (``full_clean``), saved in a transaction and mirrored to Redis after the
commit: a tenant's change republishes that tenant; a platform default's change republishes every
tenant (a Celery task, since there may be many).
"""

from __future__ import annotations

from django.db import transaction

from audit import trail
from guardrails import mirror
from guardrails.models import ContentGovernance, GuardrailPolicy

POLICY_FIELDS = (
    "name",
    "enabled",
    "api_key",
    "applies_to_prompts",
    "applies_to_completions",
    "detectors",
    "blocked_terms",
    "blocked_terms_action",
    "max_prompt_chars",
    "max_prompt_tokens",
    "max_prompt_action",
    "screen_model",
    "screen_examples",
    "screen_threshold",
    "screen_action",
    "screen_timeout_ms",
    "screen_fail_open",
)


def _audited(fields) -> tuple[str, ...]:
    """The audit trail's names for ``fields`` (a key is recorded by its id)."""
    return tuple("api_key_id" if name == "api_key" else name for name in fields)


def _publish_after_commit(tenant_id) -> None:
    if tenant_id is None:
        from guardrails.tasks import resync_mirror

        transaction.on_commit(resync_mirror.delay)
    else:
        transaction.on_commit(lambda: mirror.publish_tenant(tenant_id))


def create_policy(*, tenant, created_by=None, **fields) -> GuardrailPolicy:
    """A policy of ``tenant`` (None: a platform default)."""
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise TypeError(f"unknown policy fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        policy = GuardrailPolicy(tenant=tenant, created_by=created_by, **fields)
        policy.full_clean()
        policy.save()
        trail.record(
            action="guardrail_policy.created",
            tenant=tenant,
            target=policy,
            summary=f"guardrail policy {policy.name}",
            after=trail.fields(policy, _audited(fields)),
        )
        _publish_after_commit(policy.tenant_id)
    return policy


def update_policy(*, policy: GuardrailPolicy, **fields) -> GuardrailPolicy:
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise TypeError(f"unknown policy fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        before = trail.fields(policy, _audited(fields))
        for name, value in fields.items():
            setattr(policy, name, value)
        policy.full_clean()
        policy.save()
        trail.record(
            action="guardrail_policy.changed",
            tenant=policy.tenant,
            target=policy,
            summary=f"guardrail policy {policy.name}",
            before=before,
            after=trail.fields(policy, _audited(fields)),
        )
        _publish_after_commit(policy.tenant_id)
    return policy


def delete_policy(*, policy: GuardrailPolicy) -> None:
    with transaction.atomic():
        trail.record(
            action="guardrail_policy.deleted",
            tenant=policy.tenant,
            target=policy,
            summary=f"guardrail policy {policy.name}",
        )
        policy.delete()  # guardrails.signals republishes after the commit


def governance_of(tenant) -> ContentGovernance:
    """The tenant's content settings (the defaults, unsaved, when it never set them)."""
    governance = ContentGovernance.objects.filter(tenant=tenant).first()
    return governance or ContentGovernance(tenant=tenant)


def set_governance(*, tenant, log_content: bool, content_retention_days: int) -> ContentGovernance:
    with transaction.atomic():
        governance = governance_of(tenant)
        before = trail.fields(governance, ("log_content", "content_retention_days"))
        governance.log_content = log_content
        governance.content_retention_days = content_retention_days
        governance.full_clean()
        governance.save()
        trail.record(
            action="content_governance.changed",
            tenant=tenant,
            target=governance,
            summary="content logging settings",
            before=before,
            after=trail.fields(governance, ("log_content", "content_retention_days")),
        )
        _publish_after_commit(tenant.pk)
    return governance
