"""The ``Berth-Signature`` header: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

The same scheme as Stripe's, so receivers can reuse their verification code: sign the timestamp
with the raw body, and refuse old timestamps (``verify``'s ``tolerance``) against replays.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, body: bytes, value: str, *, tolerance: int = 300, now: int | None = None) -> bool:
    """What a receiver does: True if ``value`` signs ``body`` with ``secret`` and is recent."""
    try:
        fields = dict(part.split("=", 1) for part in value.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(fields.get("v1", ""), signature(secret, timestamp, body))
