"""Quotas, checked and taken atomically in Redis by one Lua script per admission.

The tenant's plan sets ``rpm``, ``tpm``, ``concurrency`` and ``monthly_tokens`` (``None`` =
unlimited). Its keys (names and lifetimes in ``contract``): per-minute request and token counters
(fixed windows), a sorted set of in-flight request ids scored by lease expiry (gateways renew
their leases every ``lease_seconds / 3``; a dead gateway's leases expire), and the month's tokens.
Admission adds 1 request and reserves ``prompt estimate + max_tokens`` tokens; settlement adds
``actual - reserved``.

Spend: settlement also adds the request's cost (its tokens at the model's mirrored prices,
``contract.spend``) to the tenant's spend counter for the billing period, and admission refuses
with ``insufficient_quota`` once the counter reaches the tenant's mirrored ``spend_limit_micros``
or while billing's ``spend_blocked`` key exists. So a limit holds within one request: only
requests admitted before the counter crossed it can add to it.

Because check and take happen in one script, concurrent requests can overshoot a token limit only
by what requests already admitted generate beyond their reservation; request and concurrency
limits are never exceeded.

Batch lines (``gateway.batch``) have their own pair of scripts: admission checks the spend limit
and the plan's monthly ``batch_tokens`` budget (``q:{t}:batch:tokens:<YYYYMM>``) and nothing else,
settlement moves that counter and the spend counter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

from contract import spend
from contract.redis_names import RedisNames
from gateway.errors import GatewayError
from gateway.redis_pipe import is_noscript

logger = logging.getLogger("berth.gateway.quotas")
MONTH_TTL = 40 * 86400

ADMIT = """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local reserve = tonumber(ARGV[3])
local lease_until = tonumber(ARGV[4])
local nscopes = tonumber(ARGV[5])
local spend_limit = tonumber(ARGV[6])
local minute_end = (math.floor(now / 60000) + 1) * 60000
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  return {0, 'spend', 0}
end
if spend_limit >= 0 and tonumber(redis.call('GET', KEYS[#KEYS - 1]) or '0') >= spend_limit then
  return {0, 'spend', 0}
end
for i = 0, nscopes - 1 do
  local rpm = tonumber(ARGV[7 + i * 4])
  local tpm = tonumber(ARGV[8 + i * 4])
  local conc = tonumber(ARGV[9 + i * 4])
  local month = tonumber(ARGV[10 + i * 4])
  local k = i * 4
  if rpm >= 0 and tonumber(redis.call('GET', KEYS[k + 1]) or '0') + 1 > rpm then
    return {0, 'rpm', minute_end - now, i}
  end
  if tpm >= 0 and tonumber(redis.call('GET', KEYS[k + 2]) or '0') + reserve > tpm then
    return {0, 'tpm', minute_end - now, i}
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then
      return {0, 'conc', 1000, i}
    end
  end
  if month >= 0 and tonumber(redis.call('GET', KEYS[k + 4]) or '0') + reserve > month then
    return {0, 'month', 0, i}
  end
end
local out = {1, '', 0, 0}
for i = 0, nscopes - 1 do
  local k = i * 4
  local used_r = redis.call('INCR', KEYS[k + 1])
  redis.call('EXPIRE', KEYS[k + 1], 120)
  local used_t = redis.call('INCRBY', KEYS[k + 2], reserve)
  redis.call('EXPIRE', KEYS[k + 2], 120)
  if tonumber(ARGV[9 + i * 4]) >= 0 then
    redis.call('ZADD', KEYS[k + 3], lease_until, rid)
    redis.call('PEXPIREAT', KEYS[k + 3], lease_until + 1000)
  end
  redis.call('INCRBY', KEYS[k + 4], reserve)
  redis.call('EXPIRE', KEYS[k + 4], %(month_ttl)d)
  if i == 0 then
    table.insert(out, used_r)
    table.insert(out, used_t)
    table.insert(out, minute_end - now)
  end
end
return out
""" % {"month_ttl": MONTH_TTL}  # noqa: UP031 - Lua braces would fight str.format

SETTLE = """
local delta = tonumber(ARGV[1])
local rid = ARGV[2]
local nscopes = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
for i = 0, nscopes - 1 do
  local k = i * 3
  if delta ~= 0 then
    if redis.call('EXISTS', KEYS[k + 1]) == 1 then
      redis.call('INCRBY', KEYS[k + 1], delta)
    end
    redis.call('INCRBY', KEYS[k + 2], delta)
  end
  redis.call('ZREM', KEYS[k + 3], rid)
end
if cost > 0 then
  redis.call('INCRBY', KEYS[nscopes * 3 + 1], cost)
  redis.call('EXPIRE', KEYS[nscopes * 3 + 1], %(spend_ttl)d)
end
return 1
""" % {"spend_ttl": spend.COUNTER_TTL_SECONDS}  # noqa: UP031


# Batch lines (``gateway.batch``): the plan's monthly ``batch_tokens`` budget and the spend limit,
# nothing of rpm, tpm, concurrency or the interactive monthly tokens.
# KEYS: batch tokens this month, spend counter, spend blocked; ARGV: reserve, budget (-1 = none),
# spend limit (-1 = none).
BATCH_ADMIT = """
local reserve = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local spend_limit = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, 'spend'}
end
if spend_limit >= 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= spend_limit then
  return {0, 'spend'}
end
if budget >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + reserve > budget then
  return {0, 'batch'}
end
redis.call('INCRBY', KEYS[1], reserve)
redis.call('EXPIRE', KEYS[1], %(month_ttl)d)
return {1, ''}
""" % {"month_ttl": MONTH_TTL}  # noqa: UP031

# KEYS: batch tokens this month, spend counter; ARGV: actual - reserved, cost.
BATCH_SETTLE = """
local delta = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
if delta ~= 0 then
  redis.call('INCRBY', KEYS[1], delta)
end
if cost > 0 then
  redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIRE', KEYS[2], %(spend_ttl)d)
end
return 1
""" % {"spend_ttl": spend.COUNTER_TTL_SECONDS}  # noqa: UP031


def _limit(value) -> int:
    return -1 if value is None or value == "" else int(value)


def _duration(ms: int) -> str:
    seconds = max(0, ms) / 1000
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:.3g}s"


@dataclass
class Lease:
    """What one admitted request holds; settled exactly once."""

    request_id: str
    reserved: int
    settle_keys: list[str]
    conc_keys: list[str]
    nscopes: int
    spend_key: str = ""
    price_input_micros: int = 0
    price_output_micros: int = 0
    price_cached_input_micros: int | None = None
    price_percent: int = spend.FULL_PERCENT  # the service tier's, in hundredths (contract.spend)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False
    batch: bool = False  # a batch line's: settled by BATCH_SETTLE on its own keys


class Quotas:
    def __init__(self, redis, settings, hot):
        self.redis = redis
        self.hot = hot  # the auto-pipelined connection (gateway/redis_pipe.py)
        self.settings = settings
        self.names = RedisNames(settings.redis_prefix)
        self._admit_sha = hashlib.sha1(ADMIT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._settle_sha = hashlib.sha1(SETTLE.encode()).hexdigest()  # noqa: S324
        self._batch_admit_sha = hashlib.sha1(BATCH_ADMIT.encode()).hexdigest()  # noqa: S324
        self._batch_settle_sha = hashlib.sha1(BATCH_SETTLE.encode()).hexdigest()  # noqa: S324
        self.in_flight: dict[str, Lease] = {}
        self._period: tuple[int, str] = (-1, "")  # (epoch minute, billing period id)

    async def load_scripts(self) -> None:
        await self.redis.script_load(ADMIT)
        await self.redis.script_load(SETTLE)
        await self.redis.script_load(BATCH_ADMIT)
        await self.redis.script_load(BATCH_SETTLE)

    async def _admit(self, keys: list[str], args: list, sha: str | None = None):
        command = ("EVALSHA", sha or self._admit_sha, len(keys), *keys, *args)
        result = (await self.hot.execute(command))[0]
        if is_noscript(result):  # Redis restarted or flushed its script cache
            await self.load_scripts()
            result = (await self.hot.execute(command))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def admit(
        self,
        principal,
        request_id: str,
        reserve: int,
        *,
        price_input_micros: int = 0,
        price_output_micros: int = 0,
        price_cached_input_micros: int | None = None,
        price_percent: int = spend.FULL_PERCENT,
    ) -> Lease:
        """Check and take every quota at once; the prices are the model's (the cost is settled)."""
        now_ms = int(time.time() * 1000)
        minute = now_ms // 60000
        month = time.strftime("%Y%m", time.gmtime(now_ms / 1000))
        tenant = principal.tenant.tenant_id
        spend_limit = principal.tenant.spend_limit_micros
        keys: list[str] = []
        settle_keys: list[str] = []
        conc_keys: list[str] = []
        args: list = [
            now_ms,
            request_id,
            reserve,
            now_ms + self.settings.lease_seconds * 1000,
            0,
            -1 if spend_limit is None else spend_limit,
        ]
        # One scope, the tenant's plan (the scripts take several, four keys each).
        scopes = [principal.tenant.plan]
        for limits in scopes:
            rpm_k, tpm_k, conc_k, month_k = (
                self.names.quota_rpm(tenant, minute),
                self.names.quota_tpm(tenant, minute),
                self.names.quota_concurrency(tenant),
                self.names.quota_monthly_tokens(tenant, month),
            )
            keys += [rpm_k, tpm_k, conc_k, month_k]
            settle_keys += [tpm_k, month_k, conc_k]
            conc_keys.append(conc_k if _limit(limits.get("concurrency")) >= 0 else "")
            args += [
                _limit(limits.get("rpm")),
                _limit(limits.get("tpm")),
                _limit(limits.get("concurrency")),
                _limit(limits.get("monthly_tokens")),
            ]
        args[4] = len(scopes)
        if minute != self._period[0]:  # periods change on minute boundaries at most
            self._period = (minute, spend.period_id(self.settings.billing_period))
        spend_key = self.names.spend_counter(tenant, self._period[1])
        settle_keys.append(spend_key)
        keys.append(spend_key)
        keys.append(self.names.spend_blocked(tenant))
        result = await self._admit(keys, args)
        plan = principal.tenant.plan
        rpm, tpm = _limit(plan.get("rpm")), _limit(plan.get("tpm"))
        if int(result[0]) != 1:
            reason = result[1].decode() if isinstance(result[1], bytes) else result[1]
            raise self._refusal(reason, int(result[2]), rpm, tpm, reserve)
        used_r, used_t, reset_ms = int(result[4]), int(result[5]), int(result[6])
        headers: list[tuple[bytes, bytes]] = []
        if rpm >= 0:
            headers += [
                (b"x-ratelimit-limit-requests", str(rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(max(0, rpm - used_r)).encode()),
                (b"x-ratelimit-reset-requests", _duration(reset_ms).encode()),
            ]
        if tpm >= 0:
            headers += [
                (b"x-ratelimit-limit-tokens", str(tpm).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(0, tpm - used_t)).encode()),
                (b"x-ratelimit-reset-tokens", _duration(reset_ms).encode()),
            ]
        lease = Lease(
            request_id=request_id,
            reserved=reserve,
            settle_keys=settle_keys,
            conc_keys=[k for k in conc_keys if k],
            nscopes=len(scopes),
            spend_key=spend_key,
            price_input_micros=price_input_micros,
            price_output_micros=price_output_micros,
            price_cached_input_micros=price_cached_input_micros,
            price_percent=price_percent,
            headers=headers,
        )
        self.in_flight[request_id] = lease
        return lease

    async def admit_batch(
        self,
        principal,
        request_id: str,
        reserve: int,
        *,
        price_input_micros: int = 0,
        price_output_micros: int = 0,
        price_cached_input_micros: int | None = None,
        price_percent: int = spend.FULL_PERCENT,
    ) -> Lease:
        """Admit a batch line against the plan's monthly ``batch_tokens`` and the spend limit only.

        Batch work is what idle capacity is for: it must not use up the tenant's interactive
        requests or tokens per minute, so none of those keys is read or written.
        """
        now_ms = int(time.time() * 1000)
        minute = now_ms // 60000
        month = time.strftime("%Y%m", time.gmtime(now_ms / 1000))
        tenant = principal.tenant.tenant_id
        spend_limit = principal.tenant.spend_limit_micros
        if minute != self._period[0]:
            self._period = (minute, spend.period_id(self.settings.billing_period))
        batch_key = self.names.quota_batch_tokens(tenant, month)
        spend_key = self.names.spend_counter(tenant, self._period[1])
        keys = [batch_key, spend_key, self.names.spend_blocked(tenant)]
        budget = _limit(principal.tenant.plan.get("batch_tokens"))
        args = [reserve, budget, -1 if spend_limit is None else spend_limit]
        result = await self._admit(keys, args, self._batch_admit_sha)
        if int(result[0]) != 1:
            reason = result[1].decode() if isinstance(result[1], bytes) else result[1]
            if reason == "batch":
                raise GatewayError(
                    429,
                    f"Your organization's monthly batch token budget ({budget} tokens) is spent. "
                    "Ask your organization's admin to raise it.",
                    type="insufficient_quota",
                    code="insufficient_quota",
                )
            raise self._refusal(reason, 0, -1, -1, reserve)
        lease = Lease(
            request_id=request_id,
            reserved=reserve,
            settle_keys=[batch_key, spend_key],
            conc_keys=[],
            nscopes=0,
            spend_key=spend_key,
            price_input_micros=price_input_micros,
            price_output_micros=price_output_micros,
            price_cached_input_micros=price_cached_input_micros,
            price_percent=price_percent,
            batch=True,
        )
        self.in_flight[request_id] = lease
        return lease

    def _refusal(self, reason: str, retry_ms: int, rpm: int, tpm: int, reserve: int) -> GatewayError:
        retry_after = str(max(1, math.ceil(retry_ms / 1000))).encode()
        headers = [(b"retry-after", retry_after)]
        if rpm >= 0:
            headers += [
                (b"x-ratelimit-limit-requests", str(rpm).encode()),
                (b"x-ratelimit-remaining-requests", b"0" if reason == "rpm" else str(rpm).encode()),
                (b"x-ratelimit-reset-requests", _duration(retry_ms).encode()),
            ]
        if tpm >= 0:
            headers += [
                (b"x-ratelimit-limit-tokens", str(tpm).encode()),
                (b"x-ratelimit-remaining-tokens", b"0" if reason == "tpm" else str(tpm).encode()),
                (b"x-ratelimit-reset-tokens", _duration(retry_ms).encode()),
            ]
        messages = {
            "rpm": ("Rate limit reached for requests per minute.", "rate_limit_exceeded"),
            "tpm": ("Rate limit reached for tokens per minute.", "rate_limit_exceeded"),
            "conc": ("Too many concurrent requests for your organization.", "rate_limit_exceeded"),
            "month": (
                "You exceeded your monthly token budget. Ask your organization's admin to raise it.",
                "insufficient_quota",
            ),
            "spend": (
                "You reached your organization's spend limit for this billing period. "
                "Ask your organization's admin to raise it.",
                "insufficient_quota",
            ),
        }
        message, code = messages.get(reason, ("Rate limit reached.", "rate_limit_exceeded"))
        if reason == "tpm" and 0 <= tpm < reserve:
            # Waiting will not help: say what to change.
            message = (
                f"Request too large: it may use up to {reserve} tokens (the prompt plus max_tokens for "
                "each choice; without max_tokens, what the model's context leaves), more than your "
                f"limit of {tpm} tokens per minute. Set a lower max_tokens."
            )
        if code == "insufficient_quota":
            headers = [h for h in headers if h[0] != b"retry-after"]
        return GatewayError(429, message, type=code, code=code, headers=headers)

    def settle_command(
        self, lease: Lease, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> tuple:
        """The settlement as one command (sent with the usage event); marks the lease settled.

        Tokens reserved become the actual count, the concurrency lease is freed, and the request's
        cost at the model's prices (cached prompt tokens at the cached input price) is added to the tenant's spend counter for the period.
        """
        lease.settled = True
        self.in_flight.pop(lease.request_id, None)
        cost = spend.cost_micros(
            prompt_tokens,
            completion_tokens,
            lease.price_input_micros,
            lease.price_output_micros,
            cached_tokens=cached_tokens,
            cached_micros=lease.price_cached_input_micros,
            percent=lease.price_percent,
        )
        if lease.batch:
            return (
                "EVALSHA",
                self._batch_settle_sha,
                2,
                *lease.settle_keys,
                prompt_tokens + completion_tokens - lease.reserved,
                cost,
            )
        return (
            "EVALSHA",
            self._settle_sha,
            len(lease.settle_keys),
            *lease.settle_keys,
            prompt_tokens + completion_tokens - lease.reserved,
            lease.request_id,
            lease.nscopes,
            cost,
        )

    async def retry_settle(self, command: tuple) -> None:
        """Run a settlement again after NOSCRIPT (the script cache was lost)."""
        await self.load_scripts()
        result = (await self.hot.execute(command))[0]
        if isinstance(result, Exception):
            raise result

    async def run_background(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self.renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not renew concurrency leases", exc_info=True)

    async def renew_leases(self) -> None:
        """Push the expiry of every in-flight lease forward (one pipeline)."""
        if not self.in_flight:
            return
        until = int(time.time() * 1000) + self.settings.lease_seconds * 1000
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for lease in list(self.in_flight.values()):
            for key in lease.conc_keys:
                pipe.zadd(key, {lease.request_id: until}, xx=True)
                pipe.pexpireat(key, until + 1000)
                count += 1
        if count:
            await pipe.execute()
