"""Helpers that write usage records as the gateway's consumer would."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime

from billing.models import UsageRecord

_seq = itertools.count()


def record(tenant, model: str, at: datetime, prompt: int, completion: int, **extra) -> UsageRecord:
    fields = {
        "request_id": f"req-{uuid.uuid4().hex[:12]}-{next(_seq)}",
        "tenant": tenant,
        "model": model,
        "endpoint": "chat",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "status": "ok",
        "http_status": 200,
        "latency_ms": 120,
        "occurred_at": at,
    }
    fields.update(extra)
    return UsageRecord.objects.create(**fields)
