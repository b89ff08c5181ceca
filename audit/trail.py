"""Recording an action in the audit trail: ``record(action=..., tenant=..., target=...)``.

Services call ``record`` inside the transaction that makes the change, so the entry commits or
rolls back with it. Appends are serialized by a transaction-level advisory lock: each entry reads
the chain head, links to it and moves it, and the next writer waits for that commit. Concurrent
writers therefore never fork the chain, and ``seq`` order is commit order (the export's cursor
relies on it). The lock is held to the end of the caller's transaction, so keep audited
transactions short, and record after taking the transaction's row locks (``select_for_update``):
a transaction that holds the chain's lock and then waits for a row can deadlock with one that
holds that row and waits to record.

Who acted comes from ``actor``/``request`` when given, else from the request being served
(``audit.context``), else it is the system. Before/after hold only what changed and never secrets.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit import chain, context
from audit.constants import SECRET_FIELDS, ActorKind
from audit.models import AuditEntry, ChainHead

logger = logging.getLogger(__name__)

CHAIN_LOCK = 0x62657274_17  # "bert" + the issue: pg advisory lock ids are bigints
STAFF_PATHS = ("/admin/", "/staff/")


def record(
    *,
    action: str,
    tenant=None,
    actor=None,
    actor_kind: str = ActorKind.USER,
    target=None,
    target_type: str = "",
    target_id: str = "",
    summary: str = "",
    before: dict | None = None,
    after: dict | None = None,
    request=None,
    ip: str = "",
    user_agent: str = "",
    actor_label: str = "",
    event_id=None,
    created_at=None,
) -> AuditEntry:
    """Append one entry and return it (see the module docstring for how the actor is found).

    ``target`` (any model instance) fills ``target_type`` (``app_label.model``) and ``target_id``.
    ``actor_label`` overrides the label derived from the actor; ``event_id`` and ``created_at``
    are for entries moved in from the gateway's stream.
    """
    request = request if request is not None else context.current_request()
    kind, actor, label = _actor(request, actor=actor, actor_kind=str(actor_kind))
    if target is not None:
        target_type = target_type or f"{target._meta.app_label}.{target._meta.model_name}"
        target_id = target_id or str(target.pk)
    if request is not None:
        meta = getattr(request, "META", {})
        ip = ip or meta.get("REMOTE_ADDR", "")
        user_agent = user_agent or meta.get("HTTP_USER_AGENT", "")
    entry = AuditEntry(
        created_at=created_at or timezone.now(),
        actor=actor,
        actor_kind=kind,
        actor_label=(actor_label or label)[:254],
        tenant_id=getattr(tenant, "pk", tenant),
        tenant_label=str(getattr(tenant, "slug", "") or "")[:100],
        action=action,
        target_type=target_type[:64],
        target_id=str(target_id)[:64],
        summary=summary,
        before=_clean(before),
        after=_clean(after),
        ip=_ip(ip),
        user_agent=user_agent[:512],
        event_id=event_id,
    )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        head, _ = ChainHead.objects.get_or_create(pk=1)
        entry.prev_hash = head.last_hash
        entry.hash = chain.digest(entry)
        entry.save(force_insert=True)
        ChainHead.objects.filter(pk=1).update(last_seq=entry.seq, last_hash=entry.hash)
    return entry


def changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields whose value differs, as ``(before, after)`` (what services pass to ``record``)."""
    changed = [name for name in after if before.get(name) != after.get(name)]
    return {n: before.get(n) for n in changed}, {n: after.get(n) for n in changed}


def fields(instance, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``{name: value}`` of a model instance's fields, for ``changes``."""
    return {name: getattr(instance, name) for name in names}


def _actor(request, *, actor, actor_kind: str):
    user = getattr(request, "user", None) if request is not None else None
    if actor is None and user is not None and getattr(user, "is_authenticated", False):
        actor = user
    if actor_kind == ActorKind.SYSTEM or (actor is None and actor_kind == ActorKind.USER):
        return ActorKind.SYSTEM, None, "system"
    auth = getattr(request, "auth", None) if request is not None else None
    display_prefix = getattr(auth, "display_prefix", None)
    email = getattr(actor, "email", "") or ""
    if actor_kind == ActorKind.USER and display_prefix:
        return ActorKind.API_KEY, actor, f"{display_prefix}… ({email})" if email else f"{display_prefix}…"
    path = getattr(request, "path", "") if request is not None else ""
    if actor_kind == ActorKind.USER and getattr(actor, "is_staff", False) and path.startswith(STAFF_PATHS):
        return ActorKind.STAFF, actor, email
    return actor_kind, actor, email


def _clean(values: dict | None) -> dict | None:
    """JSON-safe copy without secret fields (Decimal, datetime and UUID become strings)."""
    if values is None:
        return None
    kept = {k: v for k, v in values.items() if str(k).lower() not in SECRET_FIELDS}
    return json.loads(json.dumps(kept, cls=DjangoJSONEncoder))


def _ip(value: str) -> str:
    value = (value or "").strip()
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        return ""


def diff(instance, *, exclude: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """What saving ``instance`` changes against its stored row (every field when it is new).

    Call it before the save; pass the result to ``record(before=..., after=...)``.
    """
    names = [
        field.attname
        for field in instance._meta.concrete_fields
        if not field.primary_key and field.attname not in exclude and field.name not in exclude
    ]
    stored = None
    if not instance._state.adding and instance.pk is not None:
        stored = type(instance)._default_manager.filter(pk=instance.pk).values(*names).first()
    return changes(stored or {}, {name: getattr(instance, name) for name in names})


def form_changes(form) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bound, valid ModelForm's changed fields as ``(before, after)``."""
    names = list(form.changed_data)
    return {n: form.initial.get(n) for n in names}, {n: form.cleaned_data.get(n) for n in names}
