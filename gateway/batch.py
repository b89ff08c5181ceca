"""Batch lines: the control plane's batch runner calling the gateway on a tenant's behalf.

A line of a ``/v1/batches`` batch is sent by the Celery runner (``batches.runner``) to the same
endpoint path an interactive request uses, so it is validated, routed, answered and metered by
the same code. What differs is who it is and what it costs:

* it carries no API key but ``Authorization: Bearer <BERTH_INTERNAL_TOKEN>`` (compared in constant
  time; a gateway without a token refuses every batch line) and says whose it is with
  ``X-Berth-Tenant`` (the tenant mirror: unknown → 401, suspended → 403), which batch with
  ``X-Berth-Batch`` and under which request id with ``X-Berth-Request-Id`` (the line's own
  ``batch_<hex>_<index>``: a line that is run again is metered under the same id, so the usage
  consumer keeps one record);
* it is served in the ``batch`` tier: last in the admission queue, ``priority`` RANK["batch"] for
  the engine, and billed at the batch price (``service_tier`` and ``batch_id`` on the usage event);
* it is not counted against the tenant's rpm, tpm, concurrency or monthly tokens but against the
  plan's monthly ``batch_tokens`` budget (``Quotas.admit_batch``).

Any failure here is the same 401 a bad API key gets, so the path tells an outsider nothing.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from contract import tiers
from gateway.auth import KeyEntry, Principal, presented_key
from gateway.errors import GatewayError, invalid_api_key

HEADER = b"x-berth-batch"
TENANT_HEADER = b"x-berth-tenant"
REQUEST_ID_HEADER = b"x-berth-request-id"

BATCH_ID = re.compile(r"batch_[0-9a-f]{8,40}")
TENANT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REQUEST_ID = re.compile(r"(batch_[0-9a-f]{8,40})_[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class BatchCall:
    """Who a batch line is for, which batch it belongs to and the id it is metered under."""

    principal: Principal
    batch_id: str
    request_id: str
    tier: str = tiers.BATCH


def is_batch(headers: dict[bytes, bytes]) -> bool:
    return HEADER in headers


def _header(headers: dict[bytes, bytes], name: bytes) -> str:
    value = headers.get(name)
    return value.decode("latin-1").strip() if value is not None else ""


async def authenticate(auth, token: str, headers: dict[bytes, bytes]) -> BatchCall:
    """The batch line's tenant, or the 401 (403 when suspended) an interactive request would get."""
    presented = presented_key(headers) or ""
    if not token or not hmac.compare_digest(presented.encode(), token.encode()):
        raise invalid_api_key()
    batch_id = _header(headers, HEADER)
    tenant_id = _header(headers, TENANT_HEADER).lower()
    request_id = _header(headers, REQUEST_ID_HEADER)
    match = REQUEST_ID.fullmatch(request_id)
    if (
        not BATCH_ID.fullmatch(batch_id)
        or not TENANT_ID.fullmatch(tenant_id)
        or match is None
        or match.group(1) != batch_id
    ):
        raise GatewayError(
            400,
            "A batch line needs X-Berth-Batch (the batch id), X-Berth-Tenant (a tenant id) and "
            "X-Berth-Request-Id (<batch id>_<line index>).",
            code="invalid_batch_headers",
        )
    tenant = await auth.active_tenant(tenant_id)
    key = KeyEntry(
        key_id="",
        tenant_id=tenant_id,
        secret_hash="",
        pepper_id="",
        allowed_models=frozenset(),
        expires_at=None,
    )
    return BatchCall(principal=Principal(key=key, tenant=tenant), batch_id=batch_id, request_id=request_id)
