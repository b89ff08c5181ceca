"""Throttling of the account flows: login, sign-up, password reset and invitations.

Counted by django-ratelimit in the shared Redis cache, once per client IP and once per account
(the address typed in, or the acting user), so neither one address tried from many IPs nor many
addresses tried from one IP get through. The rates are ``settings.THROTTLE_RATES``. When Redis is
unreachable the flows fail open with a warning: locking every person out of login is worse than
a few unthrottled minutes, and the per-tenant invitation cap (a database count) still holds.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


def check(request, *, flow: str, account: str) -> int | None:
    """Count one attempt at ``flow``; the seconds to wait if it is over a limit, else None."""
    ip_rate, account_rate = settings.THROTTLE_RATES[flow]
    # A hash, so the addresses people type never sit in the cache in clear.
    account_value = hashlib.sha256(account.strip().lower().encode()).hexdigest()
    waits = []
    for scope, rate, key in (
        ("ip", ip_rate, "ip"),
        ("account", account_rate, lambda group, request: account_value),
    ):
        try:
            usage = get_usage(request, group=f"berth.{flow}.{scope}", key=key, rate=rate, increment=True)
        except (RedisError, OSError) as exc:
            logger.warning("throttling of %s skipped, the cache is unreachable: %s", flow, exc)
            return None
        if usage and usage["should_limit"]:
            waits.append(max(int(usage["time_left"]), 1))
    return max(waits) if waits else None


def message(wait: int) -> str:
    minutes = max(1, -(-wait // 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many attempts. Try again in {minutes} {unit}."
