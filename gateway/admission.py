"""The admission queue: when a model's engines are saturated, requests wait here, not in the engine.

Without it every request goes straight to an engine, whose scheduler serves them first come,
first served: one tenant's burst delays everyone's interactive traffic. With it the gateway
decides *when* a request is sent, in order of its tier's band (``contract.tiers.RANK``: priority,
then default, flex, batch) and, within a band, by weighted fair queuing across tenants on
*tokens*.

Capacity
--------
A model (a LoRA adapter counts as its base: same workers) may have ``capacity`` requests
admitted at once: its ready workers × ``BERTH_GATEWAY_ADMIT_PER_WORKER`` (set it to the engines'
``--max-num-seqs``). When the engine-load scrape (``routing.Router.engine_load``) says one of its
workers holds a backlog of its own (waiting ≥ 10 % of the per-worker capacity, at least 2: one or
two waiting are only arrivals between two scheduler steps), capacity is tightened to what the
engines report running (never below one per worker), and with a KV cache ≥ 95 % full to one more than that (so it
creeps back up scrape by scrape once the cache has room): the excess queues here.

Slots across gateway replicas (state in Redis, one Lua script per step)
-----------------------------------------------------------------------
Admission is counted in *slots* held per gateway: ``adm:{m}:slots`` (gateway → slots held; their
sum never exceeds capacity, so two gateways together never exceed it). A gateway keeps a slot it
was granted after its request ends while nobody waits, so the next request takes it **without any
Redis command**: the common, unsaturated case costs a dictionary lookup (issue 20's budget). Only
when a gateway holds no free slot does a request run the ``acquire`` step (one script): take a
slot if the model has room and nobody waits, else join the queue. When someone waits (a ``q``
message on the ``adm`` channel, or a step's answer), every gateway gives back the slots it is not
using and hands each ending request's slot back through the ``release`` step, which grants it to
the best waiter at once. A grant is published on the ``adm`` channel (``g <gateway> <model>
<entry>``), which wakes the waiter; a waiter also polls every ``BERTH_GATEWAY_ADMIT_POLL_SECONDS``
(the ``poll`` step dispatches too), so a lost message costs a poll, never a request.

Gateways heartbeat into ``adm:{m}:alive`` (gateway → expiry, every
``BERTH_GATEWAY_ADMIT_HEARTBEAT_SECONDS``); a gateway silent for
``BERTH_GATEWAY_ADMIT_GATEWAY_TTL`` is dead: any step drops its slots and its waiting entries.

Priority headroom: priority requests may take ``BERTH_GATEWAY_ADMIT_PRIORITY_HEADROOM`` slots per
worker beyond the capacity. Engines run vLLM's ``--scheduling-policy priority`` and get the tier's
``RANK`` as the request's ``priority``, so a priority request admitted into a full batch preempts
a lower tier's at once instead of waiting for one to finish; a priority request's slot is handed
back when it ends, never kept for other tiers. Setting the per-worker capacity a little above
``--max-num-seqs`` keeps a request or two waiting in each engine, so a finished sequence's place
is refilled at the engine's next step rather than a gateway round trip later (the engine's own
backlog rule above stops that from growing).

Batch reserve: batch lines (``/v1/batches``) run on idle capacity only: they may take a slot
while fewer than capacity − ``BERTH_GATEWAY_ADMIT_BATCH_RESERVE`` × capacity (default half) are
in use, so interactive requests that arrive find a free sequence in the engine rather than wait
for a batch line to finish (engines do not preempt a running sequence for a new one). Batch lines
always take their slot through Redis and hand it back when they end.

Order: per band, start-time fair queuing (SFQ) on tokens. A waiting request costs its token
reservation (``Proxy._reservation``: prompt estimate + max_tokens per choice); its start tag is
``max(V_band, F_tenant)`` and the tenant's finish tag becomes ``start + cost / weight`` (weight =
the plan's ``weight``, ≥ 1). Each band is a sorted set scored by start tag; dispatch pops the
lowest tag of the highest non-empty band and sets ``V_band`` to it. So under saturation tenants of
one band receive tokens in proportion to their weights, however many requests each sends.

Bounds: a request waits at most ``BERTH_GATEWAY_ADMIT_MAX_WAIT`` (priority and default) or
``BERTH_GATEWAY_ADMIT_MAX_WAIT_BACKGROUND`` (flex and batch) seconds, and a band holds at most
``BERTH_GATEWAY_ADMIT_QUEUE_MAX`` waiting requests per model. Past either: priority and default
get 503 ``server_overloaded`` (the service, not the caller, is short), flex and batch 429
``rate_limit_exceeded`` (as OpenAI answers flex requests it has no capacity for), both with
``Retry-After``. A client that hangs up while queued leaves the queue (it frees no slot: it held
none). Time spent queued goes into the usage event's ``queue_ms`` and the
``berth_gateway_admission_wait_seconds`` histogram.

``BERTH_GATEWAY_ADMISSION=0`` turns the queue off: requests go to the engines as they come (FCFS).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from contract import tiers
from contract.redis_names import RedisNames
from gateway import metrics
from gateway.errors import GatewayError

logger = logging.getLogger("berth.gateway.admission")

# Queue bands in order of service (contract.tiers.RANK); the script's KEYS[6..9].
BANDS: tuple[str, ...] = tuple(sorted(tiers.RANK, key=tiers.RANK.__getitem__))
BACKGROUND = frozenset({tiers.FLEX, tiers.BATCH})
KV_FULL = 0.95
CONTENDED_HOLD = 2.0  # seconds
BACKLOG = 0.1  # of the per-worker capacity waiting in an engine: it runs fewer than that
KEY_TTL_MS = 3_600_000  # an idle model's queue state disappears after an hour

STEP = """
local op = ARGV[1]
local gw = ARGV[2]
local now = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local alive_until = tonumber(ARGV[5])
local channel = ARGV[6]
local model = ARGV[7]
-- "<headroom>[:<reserve>]": slots beyond cap only the priority band (1) may take, and slots below
-- cap the batch band (NB) may not take (kept for interactive arrivals)
local hr, rs = string.match(ARGV[8], '^(%d+):?(%d*)$')
local headroom = tonumber(hr)
local reserve = tonumber(rs) or 0
local slots, alive, entries, granted, vt, exp = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local NB = 4
local function q(b) return KEYS[6 + b] end

redis.call('ZADD', alive, alive_until, gw)
-- dead gateways: their slots and their waiting entries go
local dead = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
if #dead > 0 then
  local gone = {}
  for _, d in ipairs(dead) do
    redis.call('HDEL', slots, d)
    redis.call('ZREM', alive, d)
    gone[d] = true
  end
  local all = redis.call('HGETALL', entries)
  for i = 1, #all, 2 do
    local owner, band = string.match(all[i + 1], '^([^|]*)|(%d)')
    if gone[owner] then
      redis.call('ZREM', q(tonumber(band)), all[i])
      redis.call('ZREM', exp, all[i])
      redis.call('HDEL', entries, all[i])
    end
  end
end
-- entries past their deadline (their gateway stopped waiting without saying so)
local late = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
for _, e in ipairs(late) do
  local info = redis.call('HGET', entries, e)
  if info then
    local band = string.match(info, '^[^|]*|(%d)')
    redis.call('ZREM', q(tonumber(band)), e)
    redis.call('HDEL', entries, e)
  end
  redis.call('ZREM', exp, e)
end
redis.call('ZREMRANGEBYSCORE', granted, '-inf', now - 120000)

local total = 0
for _, v in ipairs(redis.call('HVALS', slots)) do total = total + tonumber(v) end

local function depth()
  local n = 0
  for b = 1, NB do n = n + redis.call('ZCARD', q(b)) end
  return n
end

local function room(b)
  if b == 1 then return total < cap + headroom end
  if b == NB then return total < cap - reserve end
  return total < cap
end

local function dispatch()
  while total < cap + headroom do
    local band, head = nil, nil
    for b = 1, NB do
      local h = redis.call('ZRANGE', q(b), 0, 0, 'WITHSCORES')
      if h[1] then band, head = b, h break end
    end
    if not band or not room(band) then return end
    local e = head[1]
    redis.call('ZREM', q(band), e)
    redis.call('ZREM', exp, e)
    local info = redis.call('HGET', entries, e)
    redis.call('HDEL', entries, e)
    if info then
      local owner = string.match(info, '^([^|]*)')
      local until_ms = tonumber(redis.call('ZSCORE', alive, owner) or '0')
      if until_ms > now then
        redis.call('HINCRBY', slots, owner, 1)
        total = total + 1
        redis.call('ZADD', granted, now, e)
        redis.call('HSET', vt, 'V:' .. band, head[2])
        redis.call('PUBLISH', channel, 'g ' .. owner .. ' ' .. model .. ' ' .. e)
      end
    end
  end
end

local function touch()
  for i = 1, 6 + NB do redis.call('PEXPIRE', KEYS[i], KEY_TTL_MS) end
end

local result
if op == 'acquire' then
  local e, band, tenant = ARGV[9], tonumber(ARGV[10]), ARGV[11]
  local cost, weight, deadline, qmax = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
  if room(band) and depth() == 0 then
    redis.call('HINCRBY', slots, gw, 1)
    result = {1, total + 1, 0}
  elseif redis.call('ZCARD', q(band)) >= qmax then
    result = {-1, total, depth()}
  else
    local v = tonumber(redis.call('HGET', vt, 'V:' .. band) or '0')
    local f = tonumber(redis.call('HGET', vt, 'F:' .. band .. ':' .. tenant) or '0')
    local start = math.max(v, f)
    redis.call('HSET', vt, 'F:' .. band .. ':' .. tenant, start + cost / weight)
    redis.call('ZADD', q(band), start, e)
    redis.call('HSET', entries, e, gw .. '|' .. band .. '|' .. tenant .. '|' .. cost .. '|' .. now)
    redis.call('ZADD', exp, deadline, e)
    redis.call('PUBLISH', channel, 'q ' .. gw .. ' ' .. model)
    dispatch()
    if redis.call('ZSCORE', granted, e) then
      redis.call('ZREM', granted, e)
      result = {1, total, depth()}
    else
      result = {0, total, depth()}
    end
  end
elseif op == 'release' then
  local n = tonumber(ARGV[9])
  local held = tonumber(redis.call('HGET', slots, gw) or '0')
  n = math.min(n, held)
  if held - n <= 0 then redis.call('HDEL', slots, gw) else redis.call('HINCRBY', slots, gw, -n) end
  total = total - n
  dispatch()
  result = {0, total, depth()}
elseif op == 'poll' or op == 'cancel' then
  local e = ARGV[9]
  if op == 'poll' then dispatch() end
  if redis.call('ZSCORE', granted, e) then
    redis.call('ZREM', granted, e)
    result = {1, total, depth()}
  elseif redis.call('HEXISTS', entries, e) == 1 then
    if op == 'cancel' then
      local info = redis.call('HGET', entries, e)
      local band = string.match(info, '^[^|]*|(%d)')
      redis.call('ZREM', q(tonumber(band)), e)
      redis.call('ZREM', exp, e)
      redis.call('HDEL', entries, e)
    end
    result = {0, total, depth()}
  else
    result = {-2, total, depth()}
  end
else  -- 'beat': heartbeat, dispatch what fits, report
  dispatch()
  result = {0, total, depth()}
end
table.insert(result, tonumber(redis.call('HGET', slots, gw) or '0'))
touch()
return result
""".replace("KEY_TTL_MS", str(KEY_TTL_MS))


@dataclass(slots=True)
class Ticket:
    """One admitted request's slot on a model; given back by ``Admission.release``."""

    model: str
    tier: str
    queued_ms: int = 0
    give_back: bool = False  # a priority slot (maybe headroom): never kept for other tiers


@dataclass
class _ModelState:
    capacity: int = 0
    headroom: int = 0  # slots beyond the capacity only priority requests may take
    reserve: int = 0  # slots below the capacity batch lines may not take
    held: int = 0  # slots this gateway holds in Redis
    returning: int = 0  # slots being given back (no longer in held, still in Redis)
    used: int = 0  # of them, taken by requests in progress
    # Until when the model counts as contended (requests waited, here or at another gateway, a
    # moment ago): every request goes through the queue and every ending one hands its slot on,
    # so the order is the queue's. Kept for CONTENDED_HOLD seconds after the last sign of a queue,
    # so a closed loop of clients cannot keep re-taking the slots it ends with.
    contended_until: float = 0.0
    waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    last_active: float = 0.0

    @property
    def contended(self) -> bool:
        return time.monotonic() < self.contended_until

    def contend(self) -> None:
        self.contended_until = time.monotonic() + CONTENDED_HOLD


class Admission:
    """One per gateway process (``app.state.admission``)."""

    def __init__(self, redis, settings, router):
        self.redis = redis
        self.settings = settings
        self.router = router
        self.names = RedisNames(settings.redis_prefix)
        self.enabled = settings.admission
        self.instance = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._script = redis.register_script(STEP)
        self._models: dict[str, _ModelState] = {}
        self._ids = itertools.count()
        self._background: set[asyncio.Task] = set()
        self._held_counters: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ capacity

    def capacity(self, model: str, workers: list) -> tuple[int, int]:
        """(capacity, priority headroom) of the model on these workers."""
        per = self.settings.admit_per_worker
        cap = per * len(workers)
        loads = self.router.engine_load
        running = waiting = 0.0
        kv_full = False
        for worker in workers:
            load = loads.get(worker.worker_id)
            if load:
                running += float(load.get("running", 0) or 0)
                waiting += float(load.get("waiting", 0) or 0)
                kv_full = kv_full or float(load.get("kv", 0) or 0) >= KV_FULL
        if waiting >= max(2.0, per * BACKLOG) * len(workers):
            # The engines hold a backlog of their own (they run fewer than the setting says): admit
            # no more than they run. A request or two waiting is only one between two steps.
            cap = min(cap, max(len(workers), int(running)))
        elif kv_full:
            # Nearly out of KV cache: grow by at most one beyond what runs (re-read every scrape).
            cap = min(cap, max(len(workers), int(running) + 1))
        return cap, self.settings.admit_priority_headroom * len(workers)

    # ------------------------------------------------------------------ the request path

    async def admit(self, *, ctx, principal, tier: str, info, event, reserve: int) -> Ticket | None:
        """Wait for a slot on the model (none while it has room); None when the queue is off or
        the model has no ready worker (the cold-start path holds those). ``tier`` is the one the
        request is served in (``gateway.tiers.serve``: a batch line's is ``batch``)."""
        if not self.enabled:
            return None
        model = info.route_name
        workers = await self.router.workers(model)
        if not workers:
            return None
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState()
        state.capacity, state.headroom = self.capacity(model, workers)
        state.reserve = min(state.capacity - 1, math.ceil(state.capacity * self.settings.admit_batch_reserve))
        state.last_active = time.monotonic()
        # Batch lines always ask Redis: only the shared count knows whether the model is below
        # capacity less the reserve (and they are not latency-bound).
        if tier != tiers.BATCH and not state.contended and state.used < state.held <= state.capacity:
            state.used += 1  # the common case: a slot this gateway already holds
            counter = self._held_counters.get((model, tier))
            if counter is None:
                counter = self._held_counters[(model, tier)] = metrics.ADMISSION_DISPATCHES.labels(
                    model, tier, "held"
                )
            counter.inc()
            return Ticket(model, tier)
        return await self._queue(ctx, principal, model, tier, state, max(1, reserve), event)

    async def _queue(self, ctx, principal, model, tier, state, cost, event) -> Ticket:
        settings = self.settings
        started = time.perf_counter()
        max_wait = settings.admit_max_wait_background if tier in BACKGROUND else settings.admit_max_wait
        entry = f"{self.instance}:{next(self._ids)}"
        weight = principal.tenant.plan.get("weight") or 1
        try:
            weight = max(1.0, float(weight))
        except (TypeError, ValueError):
            weight = 1.0
        waiter = asyncio.get_running_loop().create_future()
        state.waiting[entry] = waiter  # before the step: its grant may be published first
        metrics.ADMISSION_DEPTH.labels(model, tier).inc()
        disconnect: asyncio.Task | None = None
        granted = False
        queued = False  # the entry is (or may be) in Redis: leave the queue on any way out
        try:
            now = int(time.time() * 1000)
            result = await self._step(
                "acquire", model, state.capacity,
                entry, tiers.RANK[tier] + 1, principal.tenant.tenant_id, cost, weight,
                now + int(max_wait * 1000) + 5000, settings.admit_queue_max,
            )  # fmt: skip
            outcome = result[0]
            queued = outcome == 0
            if outcome == -1:
                state.contend()
                raise self._refusal(tier, model, "full")
            if outcome == 1:
                granted = True
            else:
                state.contend()
                deadline = time.monotonic() + max_wait
                disconnect = asyncio.ensure_future(ctx.receive())
                while not granted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        queued = False
                        granted = await self._leave(model, state, entry)
                        if not granted:
                            raise self._refusal(tier, model, "wait")
                        break
                    done, _ = await asyncio.wait(
                        {waiter, disconnect},
                        timeout=min(settings.admit_poll_seconds, left),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if waiter in done:
                        granted = True
                    elif disconnect in done and disconnect.result().get("type") == "http.disconnect":
                        queued = False
                        if await self._leave(model, state, entry):
                            self._spawn(self._give_back(model, 1, state, counted=True))
                        event.status = "client_disconnected"
                        metrics.ADMISSION_REFUSALS.labels(model, tier, "disconnect").inc()
                        raise GatewayError(
                            499, "The client closed the connection while queued.", code="client_disconnected"
                        )
                    elif disconnect in done:
                        disconnect = asyncio.ensure_future(ctx.receive())
                    else:
                        polled = await self._step("poll", model, state.capacity, entry)
                        granted = polled[0] == 1
        except BaseException:
            if queued and not granted:
                # Cancelled (the gateway is stopping) or Redis failed mid-wait: leave the queue, or
                # give back a slot granted meanwhile, so that nothing stays taken for nobody.
                self._spawn(self._abandon(model, state, entry))
            raise
        finally:
            state.waiting.pop(entry, None)
            metrics.ADMISSION_DEPTH.labels(model, tier).dec()
            if disconnect is not None and not disconnect.done():
                disconnect.cancel()
        state.held += 1
        state.used += 1
        waited = time.perf_counter() - started
        event.queue_ms = int(waited * 1000)
        metrics.ADMISSION_WAIT.labels(model, tier).observe(waited)
        metrics.ADMISSION_DISPATCHES.labels(model, tier, "queued").inc()
        # A priority slot (maybe headroom) and a batch line's go back at once, never kept for others.
        give_back = (tier == tiers.PRIORITY and state.headroom > 0) or tier == tiers.BATCH
        return Ticket(model, tier, event.queue_ms, give_back=give_back)

    def release(self, ticket: Ticket | None) -> None:
        """The request is done with the engine: keep its slot for the next one, or hand it on."""
        if ticket is None:
            return
        state = self._models.get(ticket.model)
        if state is None:
            return
        state.used = max(0, state.used - 1)
        if ticket.give_back and state.held > state.used:
            state.held -= 1
            self._spawn(self._give_back(ticket.model, 1, state))
        if state.contended or state.held > state.capacity:
            spare = state.held - state.used
            if spare > 0:
                state.held -= spare
                self._spawn(self._give_back(ticket.model, spare, state))

    # ------------------------------------------------------------------ Redis steps

    async def _step(self, op: str, model: str, capacity: int, *extra) -> list[int]:
        names = self.names
        now = int(time.time() * 1000)
        keys = [
            names.admission_slots(model),
            names.admission_alive(model),
            names.admission_entries(model),
            names.admission_granted(model),
            names.admission_virtual_time(model),
            names.admission_deadlines(model),
            *(names.admission_queue(model, band) for band in BANDS),
        ]
        args = [
            op, self.instance, now, capacity,
            now + int(self.settings.admit_gateway_ttl * 1000),
            names.admission_channel(), model, self._headroom(model), *extra,
        ]  # fmt: skip
        result = [int(x) for x in await self._script(keys=keys, args=args)]
        state = self._models.get(model)
        if state is not None and len(result) >= 3:
            if result[2] > 0:  # requests wait (this gateway's own among them)
                state.contend()
        return result

    def _headroom(self, model: str) -> str:
        """The script's ARGV[8]: ``<priority headroom>:<batch reserve>``."""
        state = self._models.get(model)
        return f"{state.headroom}:{state.reserve}" if state is not None else "0:0"

    async def _leave(self, model: str, state: _ModelState, entry: str) -> bool:
        """Take the entry out of the queue; True when it had been granted meanwhile."""
        result = await self._step("cancel", model, state.capacity, entry)
        return result[0] == 1

    async def _abandon(self, model: str, state: _ModelState, entry: str) -> None:
        try:
            if await self._leave(model, state, entry):
                await self._give_back(model, 1, state, counted=True)
        except Exception:  # noqa: BLE001 - the entry expires with its deadline anyway
            logger.warning("could not leave the admission queue of %s", model, exc_info=True)

    async def _give_back(self, model: str, count: int, state: _ModelState, counted: bool = False) -> None:
        """Return ``count`` slots to the model's pool (each goes to the best waiter, if any).

        ``counted``: the slot was granted to an entry that no longer wants it and was never
        added to ``state.held``."""
        state.returning += count
        try:
            await self._step("release", model, state.capacity, count)
        except Exception:  # noqa: BLE001 - a dead gateway's slots expire; a live one retries at the beat
            if not counted:
                state.held += count
            logger.warning("could not give back %s admission slots of %s", count, model, exc_info=True)
        finally:
            state.returning -= count

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refusal(self, tier: str, model: str, reason: str) -> GatewayError:
        metrics.ADMISSION_REFUSALS.labels(model, tier, reason).inc()
        if reason == "full":
            detail = "too many requests are waiting for it"
            retry = 2
        else:
            wait = (
                self.settings.admit_max_wait_background
                if tier in BACKGROUND
                else self.settings.admit_max_wait
            )
            detail = f"no capacity became free within {wait:g} seconds"
            retry = max(1, min(30, math.ceil(wait / 10)))
        headers = [(b"retry-after", str(retry).encode())]
        if tier in BACKGROUND:
            return GatewayError(
                429,
                f"The model `{model}` has no capacity for {tier} requests right now ({detail}). "
                "Retry later, or use the default tier.",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers=headers,
            )
        return GatewayError(
            503,
            f"The model `{model}` is overloaded ({detail}). Retry in a little while.",
            type="server_error",
            code="server_overloaded",
            headers=headers,
        )

    # ------------------------------------------------------------------ background

    async def run_background(self) -> None:
        """Heartbeat the models this gateway holds slots of, and listen for grants."""
        if not self.enabled:
            return
        listener = asyncio.create_task(self._listen(), name="admission-grants")
        try:
            while True:
                await asyncio.sleep(self.settings.admit_heartbeat_seconds)
                try:
                    await self.beat()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("admission heartbeat failed", exc_info=True)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def beat(self) -> None:
        now = time.monotonic()
        for model, state in list(self._models.items()):
            if not state.held and not state.waiting:
                if now - state.last_active > 60:
                    del self._models[model]
                continue
            result = await self._step("beat", model, state.capacity)
            mine = result[3]
            if mine < state.held:  # another gateway thought this one dead and dropped its slots
                state.held = mine
            elif mine > state.held + state.returning and not state.waiting and not self._background:
                # Granted to this gateway for a request that did not take it (none can be on its
                # way: nothing waits here, nothing is leaving the queue or being given back).
                await self._give_back(model, mine - state.held - state.returning, state, counted=True)
            if (state.contended or state.held > state.capacity) and state.held > state.used:
                spare = state.held - state.used
                state.held -= spare
                await self._give_back(model, spare, state)

    async def _listen(self) -> None:
        channel = self.names.admission_channel()
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self._on_message(data.decode())
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: resubscribe; waiters poll meanwhile
                logger.warning("admission channel lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001,S110 - closing a broken connection
                    pass

    def _on_message(self, text: str) -> None:
        parts = text.split(" ")
        if parts[0] == "g" and len(parts) == 4 and parts[1] == self.instance:
            state = self._models.get(parts[2])
            waiter = state.waiting.get(parts[3]) if state is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
        elif parts[0] == "q" and len(parts) == 3 and parts[1] != self.instance:
            state = self._models.get(parts[2])
            if state is not None:
                state.contend()
                spare = state.held - state.used
                if spare > 0:
                    state.held -= spare
                    self._spawn(self._give_back(parts[2], spare, state))

    async def close(self) -> None:
        """Give back every slot held (the gateway is stopping)."""
        for model, state in list(self._models.items()):
            if state.held:
                held, state.held = state.held, 0
                try:
                    await self._step("release", model, state.capacity, held)
                except Exception:  # noqa: BLE001 - they expire with this gateway's heartbeat
                    logger.warning("could not give back the admission slots of %s", model)
        await asyncio.gather(*self._background, return_exceptions=True)
