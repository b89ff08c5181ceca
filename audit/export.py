"""Export for SIEMs: new entries go to JSON lines in a file, syslog, or a signed webhook.

``BERTH_AUDIT_EXPORT`` picks the destination. A beat task (``audit.tasks.export``) sends the
entries after a cursor (``ExportCursor``, one per destination) in ``seq`` order and moves the
cursor in the same transaction, only after the destination took the batch: a failure sends the
batch again next time, never skips it. ``seq`` order is commit order (``audit.trail`` serializes
appends), so an entry cannot commit behind the cursor. A run that finds the cursor locked by
another run returns at once. Receivers can drop a repeated entry by its ``id`` (a crash between
the send and the commit repeats one batch).

This module is the one place that talks to the destinations (``send``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from audit.constants import Export
from audit.models import AuditEntry, ExportCursor
from audit.serialize import as_dict

logger = logging.getLogger(__name__)

SYSLOG_FACILITY = 13  # "log audit" (RFC 5424 table 1)
SYSLOG_SEVERITY = 6  # informational
SYSLOG_SD_ID = "berth@32473"  # 32473: the private enterprise number RFC 5612 reserves for examples


def destination() -> str:
    """The cursor's name: the kind and its address (a new address starts from the beginning)."""
    kind = settings.AUDIT_EXPORT
    if kind == Export.FILE:
        return f"file:{settings.AUDIT_EXPORT_PATH}"
    if kind == Export.SYSLOG:
        return f"syslog:{settings.AUDIT_EXPORT_SYSLOG}"
    if kind == Export.WEBHOOK:
        return f"webhook:{settings.AUDIT_EXPORT_WEBHOOK_URL}"
    return ""


def export_pending(*, max_batches: int = 20) -> int:
    """Send what is new to the configured destination; how many entries were sent."""
    name = destination()
    if not name:
        return 0
    ExportCursor.objects.get_or_create(destination=name)
    sent = 0
    for _ in range(max_batches):
        with transaction.atomic():
            cursor = ExportCursor.objects.select_for_update(skip_locked=True).filter(destination=name).first()
            if cursor is None:
                return sent  # another run holds it
            batch = list(
                AuditEntry.objects.filter(seq__gt=cursor.last_seq).order_by("seq")[
                    : settings.AUDIT_EXPORT_BATCH
                ]
            )
            if not batch:
                return sent
            send(settings.AUDIT_EXPORT, [as_dict(entry) for entry in batch])
            cursor.last_seq = batch[-1].seq
            cursor.save(update_fields=["last_seq", "updated_at"])
            sent += len(batch)
    return sent


def slowest_cursor() -> int | None:
    """The lowest ``seq`` the configured destination has (None: no export configured)."""
    name = destination()
    if not name:
        return None
    cursor = ExportCursor.objects.filter(destination=name).first()
    return cursor.last_seq if cursor else 0


def send(kind: str, records: list[dict[str, Any]]) -> None:
    """Deliver ``records`` or raise (the outbound seam)."""
    SENDERS[kind](records)


def _to_file(records: list[dict[str, Any]]) -> None:
    path = Path(settings.AUDIT_EXPORT_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def syslog_message(record: dict[str, Any], *, hostname: str | None = None) -> bytes:
    """One RFC 5424 message: header, one SD element (seq, tenant, actor kind), the JSON as MSG."""
    pri = SYSLOG_FACILITY * 8 + SYSLOG_SEVERITY
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    msgid = "".join(ch for ch in record["action"] if 33 <= ord(ch) <= 126)[:32] or "-"

    def param(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    sd = (
        f'[{SYSLOG_SD_ID} seq="{param(record["seq"])}" tenant="{param(record["tenant"]["slug"] or "-")}" '
        f'actorKind="{param(record["actor"]["kind"])}"]'
    )
    body = json.dumps(record, sort_keys=True, ensure_ascii=False)
    # BOM: RFC 5424 marks a UTF-8 MSG with it.
    return (
        f"<{pri}>1 {record['time']} {host} berth - {msgid} {sd} ".encode() + b"\xef\xbb\xbf" + body.encode()
    )


def _syslog_target() -> tuple[str, str, int]:
    parts = urlsplit(settings.AUDIT_EXPORT_SYSLOG)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
        raise ValueError("BERTH_AUDIT_EXPORT_SYSLOG must be udp://host:port or tcp://host:port")
    return parts.scheme, parts.hostname, parts.port


def _to_syslog(records: list[dict[str, Any]]) -> None:
    scheme, host, port = _syslog_target()
    messages = [syslog_message(record) for record in records]
    if scheme == "udp":
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for message in messages:
                sock.sendto(message, (host, port))
        return
    # TCP: octet-counting framing (RFC 6587 3.4.1), so a message may contain newlines.
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"".join(b"%d %s" % (len(message), message) for message in messages))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``X-Berth-Signature``: ``t=<epoch s>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _to_webhook(records: list[dict[str, Any]]) -> None:
    body = json.dumps({"entries": records}, sort_keys=True).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the operator's configured http(s) URL
        settings.AUDIT_EXPORT_WEBHOOK_URL,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "berth-audit-export",
            "X-Berth-Signature": signature(settings.AUDIT_EXPORT_WEBHOOK_SECRET or "", timestamp, body),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise OSError(f"audit webhook answered {response.status}")


SENDERS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    Export.FILE: _to_file,
    Export.SYSLOG: _to_syslog,
    Export.WEBHOOK: _to_webhook,
}
