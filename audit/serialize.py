"""An entry as JSON for exports and the API's CSV: one shape everywhere it leaves the database."""

from __future__ import annotations

from typing import Any

from audit import chain
from audit.models import AuditEntry


def as_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "id": str(entry.id),
        "time": chain._plain(entry.created_at),
        "action": entry.action,
        "actor": {"kind": entry.actor_kind, "id": entry.actor_id, "label": entry.actor_label},
        "tenant": {"id": str(entry.tenant_id) if entry.tenant_id else None, "slug": entry.tenant_label},
        "target": {"type": entry.target_type, "id": entry.target_id},
        "summary": entry.summary,
        "before": entry.before,
        "after": entry.after,
        "ip": entry.ip,
        "user_agent": entry.user_agent,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
