"""Forwarding one inference request: validate, admit, route, stream back, meter.

The request body is checked first (``validation.py``: every field the gateway reads, before any
quota or engine work), then passes through unchanged except what Berth must set: the engine's
served model name; ``cache_salt`` on chat, completions, responses and messages (``dialects``), an
HMAC of the tenant replacing any client value, so that tenants sharing an engine never share its
prefix cache (a tenant could otherwise time whether another sent a prefix; vLLM's security guide,
CVE-2025-46570); and for
streams ``stream_options`` with ``include_usage`` and ``continuous_usage_stats`` (so tokens are
known even when the client goes away mid-stream). What the client did not ask for — the extra
usage chunk, per-chunk usage — is stripped again on the way back (``sse.py``, a pure function).
The service tier (``tiers.py``) sets vLLM's ``priority`` in place of any client value, prices the
spend reservation, and is echoed in the answer and every streamed chunk.

One admitted request travels through the steps below as a ``Forward``: its context, the engine's
body, the lease, the usage event and where it went.

Responses, Messages, rerank and score take the same path; what differs (their usage fields, their
typed event streams, their prompt estimate) is in ``dialects.py``, and stored responses,
retrieval and ``count_tokens`` in ``responses.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from contract.usage import UsageEvent
from gateway import batch as batch_path
from gateway import dialects, metrics, sse, tiers
from gateway.errors import GatewayError, bad_request, engine_error, error_body, model_not_found
from gateway.guardrails import RequestGuard
from gateway.quotas import Lease
from gateway.routing import ModelInfo, Worker
from gateway.upstream import UpstreamError, UpstreamResponse
from gateway.validation import Checked, validate

if TYPE_CHECKING:
    from gateway.app import RequestContext

Send = Callable[[dict[str, Any]], Awaitable[None]]
Usage = dict[str, Any] | None  # an engine's usage object, as it sent it

logger = logging.getLogger("berth.gateway.proxy")

# path -> endpoint label
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    **dialects.ENDPOINTS,
}

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"content-encoding",
        b"server",
        b"date",
        b"x-request-id",
    }
)
RETRYABLE_STATUS = frozenset({502, 503, 504})
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _estimate_tokens(body: dict, endpoint: str) -> int:
    """A cheap prompt-size estimate (≈4 characters per token) for the token reservation."""
    if endpoint in dialects.ESTIMATED:
        return dialects.estimate_tokens(body, endpoint)
    chars = 0
    if endpoint == "chat":
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
            chars += 16
    else:
        value = body.get("prompt") if endpoint == "completions" else body.get("input")
        if isinstance(value, str):
            chars = len(value)
        elif isinstance(value, list):
            for item in value:
                chars += (
                    len(item) if isinstance(item, str) else (len(item) * 4 if isinstance(item, list) else 4)
                )
    return chars // 4 + 1


def _prefix(body: dict, endpoint: str, limit: int) -> str | None:
    if endpoint in dialects.TYPED_STREAMS:
        return dialects.prefix(body, endpoint, limit)
    if endpoint == "chat":
        parts = []
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                content = message.get("content")
                parts.append(content if isinstance(content, str) else orjson.dumps(content).decode())
            if sum(map(len, parts)) >= limit:
                break
        return "\x1e".join(parts)[:limit] or None
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt[:limit] or None
    return None


class Proxy:
    def __init__(self, state):
        self.state = state
        self.settings = state.settings
        self._salt_key = self.settings.cache_salt_key()
        self._salt_groups = self.settings.cache_salt_group_map()
        self._salts: dict[str, str] = {}
        self.active = 0  # forwards in progress; shutdown waits for their usage to be recorded
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ input

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.settings.max_body_bytes
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(
                    400, "Client disconnected while sending the request.", code="client_disconnected"
                )
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(
                    413, f"Request body is larger than {limit} bytes.", code="request_too_large"
                )
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _parse(self, raw: bytes, headers: dict[bytes, bytes]) -> dict:
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if content_type != b"application/json":
            raise bad_request(
                "Invalid Content-Type header: send the body as JSON with 'Content-Type: application/json'.",
                code="invalid_content_type",
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request(
                "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        return body

    def _reservation(self, body: dict, endpoint: str, checked: Checked, info) -> int:
        """Tokens held against tokens/minute and the monthly budget until the engine's count is known.

        The prompt estimate plus, for each generated sequence (``n``, ``best_of``), the request's
        ``max_tokens`` or, without one, what the model's context leaves after the prompt.
        """
        estimate = _estimate_tokens(body, endpoint)
        if endpoint in dialects.POOLING:
            return estimate
        per_choice = checked.max_tokens
        if per_choice is None:
            if info.context_length:
                per_choice = max(1, info.context_length - estimate)
            else:
                per_choice = self.settings.default_max_tokens_reserve
        return estimate + checked.choices * per_choice

    def _cache_salt(self, tenant_id: str) -> str:
        """HMAC of the tenant (or of its sharing group), never the raw id; cached per tenant."""
        salt = self._salts.get(tenant_id)
        if salt is None:
            group = self._salt_groups.get(tenant_id)
            subject = f"group:{group}" if group is not None else f"tenant:{tenant_id}"
            salt = hmac.new(self._salt_key, subject.encode(), hashlib.sha256).hexdigest()[:32]
            if len(self._salts) > 100_000:
                self._salts.clear()
            self._salts[tenant_id] = salt
        return salt

    # ------------------------------------------------------------------ the request

    async def handle(self, ctx: RequestContext, endpoint: str, send: Send) -> None:
        state = self.state
        ctx.endpoint = endpoint
        headers = dict(ctx.scope["headers"])
        # A batch line (gateway/batch.py): the runner on a tenant's behalf, under the line's request id.
        batch = (
            await batch_path.authenticate(state.auth, self.settings.internal_token, headers)
            if batch_path.is_batch(headers)
            else None
        )
        principal = batch.principal if batch is not None else await state.auth.authenticate(headers)
        ctx.principal = principal
        if batch is None:
            state.metering.touch(principal.key.key_id)
        else:
            ctx.request_id = batch.request_id
        raw = await self._read_body(ctx.scope, ctx.receive)
        body = self._parse(raw, headers)
        checked = validate(body, endpoint, max_tokens_limit=self.settings.max_tokens_limit)
        model, stream = checked.model, checked.stream
        info = await self.visible_model(principal, model)
        ctx.model = model
        tier = tiers.serve(checked.service_tier, principal.tenant.plan, batch=batch is not None)
        # Guardrails: the prompt is screened (and redacted in place) before any quota or engine work.
        guard = await state.guardrails.check(
            tenant_id=principal.tenant.tenant_id, key_id=principal.key.key_id,
            request_id=ctx.request_id, model=model, endpoint=endpoint, body=body,
        )  # fmt: skip
        if self.settings.log_content and guard is not None and guard.log_content:
            # Only for tenants that allow content logging, and as redacted as the engine sees it.
            ctx.content = (orjson.dumps(body) if guard.modified else raw)[:2000].decode("utf-8", "replace")
        # A follow-up turn of a stored response must go to the worker that holds it.
        pinned = (
            await state.responses.pinned_worker(body, principal, model) if endpoint == "responses" else None
        )

        reserve = self._reservation(body, endpoint, checked, info)
        admit = state.quotas.admit if batch is None else state.quotas.admit_batch
        lease = await admit(
            principal,
            ctx.request_id,
            reserve,
            **tiers.prices(info, tier),
        )

        modified = guard is not None and guard.modified
        if info.served_name != model:
            body["model"] = info.served_name
            modified = True
        if endpoint in dialects.SALTED:
            # Prefix-cache isolation: the engine shares cached prefixes only within one salt.
            body["cache_salt"] = self._cache_salt(principal.tenant.tenant_id)
            modified = True
        client_usage = client_continuous = False
        if stream and endpoint in dialects.CHUNKED:
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            client_usage = options.get("include_usage") is True
            client_continuous = options.get("continuous_usage_stats") is True
            options["include_usage"] = True
            options["continuous_usage_stats"] = True
            body["stream_options"] = options
            modified = True
        # The tier decides the engine's priority; the client's own priority/service_tier do not pass.
        rank = tiers.priority(tier)
        if modified or "priority" in body or "service_tier" in body:
            body.pop("service_tier", None)
            body["priority"] = rank
            modified = True

        event = UsageEvent(
            request_id=ctx.request_id,
            tenant_id=principal.tenant.tenant_id,
            key_id=principal.key.key_id if batch is None else None,
            model=model,
            endpoint=endpoint,
            status="error",
            occurred_at_ms=int(time.time() * 1000),
            service_tier=tier,
        )
        if batch is not None:
            event.batch_id = batch.batch_id
        ticket = None
        try:
            # The admission queue: waits here while the model's engines are saturated.
            ticket = await state.admission.admit(
                ctx=ctx, principal=principal, tier=tier, info=info, event=event, reserve=reserve
            )
            forward = Forward(
                ctx=ctx,
                info=info,
                payload=orjson.dumps(body) if modified else tiers.with_priority(raw, rank),
                prefix=(
                    _prefix(body, endpoint, self.settings.prefix_chars)
                    if self.settings.routing == "prefix"
                    else None
                ),
                stream=stream,
                client_usage=client_usage,
                client_continuous=client_continuous,
                lease=lease,
                event=event,
                send=send,
                guard=guard if guard is not None and guard.screens_answers else None,
                pinned=pinned,
                typed=dialects.TypedStream(endpoint) if endpoint in dialects.TYPED_STREAMS else None,
                tier=tier,
            )
            await self._forward(forward)
        except GatewayError as exc:
            event.http_status = exc.status
            raise
        finally:
            state.admission.release(ticket)
            if not lease.settled:
                # Whatever happened (client gone, upstream error, bug), meter and free the lease.
                event.latency_ms = int((time.perf_counter() - ctx.start) * 1000)
                event.http_status = event.http_status or ctx.status or 500
                try:
                    await asyncio.shield(state.metering.record(event, lease))
                except Exception:
                    state.quotas.in_flight.pop(lease.request_id, None)
                    raise
            ctx.prompt_tokens, ctx.completion_tokens = event.prompt_tokens, event.completion_tokens
            if guard is not None:
                guard.finish(status=event.status, http_status=event.http_status or ctx.status or 0)
            if event.prompt_tokens or event.completion_tokens:
                metrics.child(metrics.TOKENS, model, "prompt").inc(event.prompt_tokens)
                metrics.child(metrics.TOKENS, model, "completion").inc(event.completion_tokens)

    async def visible_model(self, principal, model: str) -> ModelInfo:
        """The model as the key may use it: absent, private to another tenant, or outside the
        key's allowed models are all the same 404."""
        info = await self.state.router.model(model)
        allowed = principal.key.allowed_models
        if (
            info is None
            or not info.visible_to(principal.tenant.tenant_id)
            or (allowed and model not in allowed)
        ):
            raise model_not_found(model)
        return info

    async def _workers(self, model: str) -> list[Worker]:
        router = self.state.router
        workers = await router.workers(model)
        if workers:
            return workers
        waited = time.perf_counter()
        workers = await router.wait_for_workers(model, self.settings.cold_start_timeout)
        metrics.QUEUE_WAIT.labels(model).observe(time.perf_counter() - waited)
        if not workers:
            raise GatewayError(
                503,
                f"No worker for model `{model}` became ready within {self.settings.cold_start_timeout:g} seconds; "
                "it has been asked to start. Retry in a little while.",
                type="server_error",
                code="model_not_ready",
                headers=[(b"retry-after", b"10")],
            )
        return workers

    async def _open(self, fwd: Forward) -> tuple[Worker, UpstreamResponse]:
        """Send to a worker; once more to another only if the first surely never got the request.

        Retried: a connection that could not be opened, and a 502/503/504 the engine answered
        before any byte of a body. Not retried (``UpstreamError`` with ``sent``): a read timeout or
        a connection dropped after the request was written — the engine may have run it already.
        """
        router = self.state.router
        ctx, info = fwd.ctx, fwd.info
        tried: set[str] = set()
        last_error = "no worker"
        for attempt in range(2):
            workers = [fwd.pinned] if fwd.pinned else await self._workers(info.route_name)
            if info.parent:  # a LoRA adapter: a worker holding it, or one it is loaded on now
                worker = await router.adapters.place(info, workers, tried)
            else:
                worker = router.choose(workers, fwd.prefix, tried)
            if worker.worker_id in tried:
                break
            tried.add(worker.worker_id)
            headers = {
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if fwd.stream else "application/json",
                "X-Request-Id": ctx.request_id,
            }
            if worker.api_key:
                headers["Authorization"] = f"Bearer {worker.api_key}"
            router.acquire(worker)
            fwd.worker = worker
            try:
                response = await self.state.upstream.send("POST", worker.url + ctx.path, headers, fwd.payload)
            except UpstreamError as exc:
                router.release(worker)
                if exc.sent:
                    raise
                fwd.worker = None
                last_error = str(exc)
                if attempt == 0:
                    metrics.UPSTREAM_RETRIES.labels(info.name).inc()
                continue
            except BaseException:
                router.release(worker)
                raise
            if info.parent and response.status == 404 and attempt == 0:
                # The engine evicted the adapter (its LRU): place the request again, which reloads.
                await response.close()
                router.release(worker)
                fwd.worker = None
                tried.discard(worker.worker_id)
                await router.adapters.evicted(info, worker, workers)
                continue
            if response.status in RETRYABLE_STATUS and attempt == 0 and len(workers) > 1:
                await response.close()
                router.release(worker)
                fwd.worker = None
                metrics.UPSTREAM_RETRIES.labels(info.name).inc()
                last_error = f"HTTP {response.status}"
                continue
            return worker, response
        # The connection error names engine hosts and ports: the log gets it, the client does not.
        logger.warning(
            "request %s: no model worker reachable for %s: %s", ctx.request_id, info.name, last_error
        )
        raise GatewayError(
            502,
            f"The model worker could not be reached (request id {ctx.request_id}). Retry the request.",
            type="server_error",
            code="upstream_unavailable",
        )

    async def _forward(self, fwd: Forward) -> None:
        state = self.state
        ctx, lease, event = fwd.ctx, fwd.lease, fwd.event
        self.active += 1
        # A request still running after checkpoint_seconds without a stream checkpoint (a long
        # prefill, a long non-streaming answer) gets one with its estimated prompt.
        timer = asyncio.get_running_loop().call_later(
            self.settings.checkpoint_seconds, self._start_early_checkpoint, fwd
        )
        try:
            try:
                worker, response = await self._open(fwd)
            except UpstreamError as exc:
                ctx.worker = event.worker = fwd.worker.worker_id if fwd.worker else None
                await self._bill_prompt(fwd)
                raise _unanswered(exc, event, self.settings.read_timeout) from exc
            ctx.worker = event.worker = worker.worker_id
            fwd.base_headers = [(b"x-request-id", ctx.request_id.encode()), *lease.headers]
            try:
                if response.status != 200 or not fwd.stream:
                    await self._plain(fwd, response)
                else:
                    await self._stream(fwd, response)
            finally:
                await response.close()
                state.router.release(worker)
        except asyncio.CancelledError:
            # The gateway is stopping and its grace period is over: bill what the engine did.
            if not lease.settled and fwd.worker is not None:
                if event.status == "error":
                    event.status, event.http_status = "gateway_stopped", 503
                await self._bill_prompt(fwd)
                event.latency_ms = int((time.perf_counter() - ctx.start) * 1000)
                await state.metering.record(event, lease)
            raise
        finally:
            timer.cancel()
            self.active -= 1

    def _start_early_checkpoint(self, fwd: Forward) -> None:
        task = asyncio.ensure_future(self._early_checkpoint(fwd))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _early_checkpoint(self, fwd: Forward) -> None:
        # Checked and queued on the Redis pipe in one step of the loop: a final event recorded
        # before this sees no checkpoint; one recorded after it removes this one.
        event = fwd.event
        if fwd.lease.settled or fwd.worker is None or event.request_id in self.state.metering.checkpointed:
            return
        snapshot = replace(
            event, prompt_tokens=_estimate_tokens(fwd.body(), event.endpoint), completion_tokens=0
        )
        try:
            await self.state.metering.checkpoint(snapshot)
        except Exception:
            logger.warning("could not checkpoint the usage of %s", event.request_id, exc_info=True)

    async def _plain(self, fwd: Forward, response: UpstreamResponse) -> None:
        ctx, event = fwd.ctx, fwd.event
        try:
            raw = await response.read()
        except Exception as exc:
            # The answer started and broke off: the engine worked on it, so it is not retried.
            error = exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc) or type(exc).__name__)
            await self._bill_prompt(fwd)
            raise _unanswered(error, event, self.settings.read_timeout) from exc
        status = response.status
        extra = [(k, v) for k, v in response.headers if k not in HOP_BY_HOP and k != b"content-type"]
        if status == 200:
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                answer = None
            usage = dialects.answer_usage(answer)  # every endpoint's usage in OpenAI's terms
            if fwd.guard is not None:
                raw = fwd.guard.answer(raw)
            raw = tiers.splice_answer(raw, tiers.field(fwd.tier, event.endpoint), event.endpoint)
            event.status = "ok"
            if fwd.typed is not None:
                await self.state.responses.remember_answer(fwd, answer)
            if isinstance(usage, dict) and _has_tokens(usage, "prompt_tokens"):
                event.prompt_tokens = usage["prompt_tokens"]
                completion = usage.get("completion_tokens")
                event.completion_tokens = completion if type(completion) is int and completion >= 0 else 0
                event.cached_tokens = dialects.cached_tokens(usage, event.prompt_tokens)
                event.usage_source = "engine"
            else:
                # An engine that reports no usage is counted, and the record says how.
                await self._bill_prompt(fwd)
                await self._count_answer(fwd, answer)
        elif status in (401, 403):
            # The engine refused *our* key: the client's key was fine, so this is our fault.
            logger.error("worker %s refused the gateway's engine key (HTTP %s)", event.worker, status)
            status = 502
            raw = error_body(
                "The model worker rejected the gateway's credentials. The operator has been told.",
                type="server_error",
                code="upstream_auth",
            )
            event.status = "upstream_error"
        else:
            raw = engine_error(status, raw, request_id=ctx.request_id)
            event.status = "upstream_error"
        event.http_status = status
        event.latency_ms = int((time.perf_counter() - ctx.start) * 1000)
        ctx.status = status
        # Usage is in Redis before the body leaves.
        await self.state.metering.record(event, fwd.lease)
        await fwd.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                    *fwd.base_headers,
                    *extra,
                ],
            }
        )
        await fwd.send({"type": "http.response.body", "body": raw})

    async def _stream(self, fwd: Forward, response: UpstreamResponse) -> None:
        state = self.state
        settings = self.settings
        ctx, lease, event, send = fwd.ctx, fwd.lease, fwd.event, fwd.send
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            # uvicorn drops writes to a closed connection silently, so listen for the disconnect.
            while True:
                message = await ctx.receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    await response.close()  # drops the upstream connection: the engine aborts
                    return

        watcher = asyncio.create_task(watch_disconnect())
        screen = fwd.guard.stream() if fwd.guard is not None else None
        ctx.status = 200
        delivered_usage = None  # usage as of the last chunk the client received
        engine_usage = None  # the latest usage the engine reported (delivered or not)
        final_usage = None
        content_chunks = 0
        delivered_chunks = 0
        first = True
        rest = b""
        tier_field = tiers.field(fwd.tier, event.endpoint)
        # Checkpoints (a SIGKILLed gateway's streams are billed from the last one): at the first
        # delivered chunk, then every checkpoint_seconds or checkpoint_tokens.
        checkpoint_tokens = -1
        checkpoint_at = 0.0
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *fwd.base_headers]}
            )
            async for chunk in response.chunks():
                rest += chunk
                if sse.EVENT_END not in rest:
                    continue
                if fwd.typed is not None:
                    part = fwd.typed.rewrite(rest)
                    if fwd.typed.response_id:
                        await self.state.responses.remember(fwd, fwd.typed.take_response_id())
                else:
                    part = sse.rewrite(
                        rest, client_usage=fwd.client_usage, client_continuous=fwd.client_continuous
                    )
                rest = part.rest
                if part.final_usage is not None:
                    final_usage = part.final_usage
                if part.latest_usage is not None:
                    engine_usage = part.latest_usage
                pending_usage = part.usage
                content_chunks += part.content_chunks
                out = (
                    tiers.splice_chunks(part.out, tier_field)
                    if fwd.typed is None
                    else tiers.splice_typed(part.out, tier_field, event.endpoint)
                )
                if disconnected.is_set():
                    break
                if first and content_chunks:
                    first = False
                    ctx.ttft = time.perf_counter() - ctx.start
                    event.ttft_ms = int(ctx.ttft * 1000)
                    metrics.TTFT.labels(event.model).observe(ctx.ttft)
                if (final_usage is not None or part.done) and not lease.settled:
                    # The last bytes are about to go: meter first.
                    await self._finish_stream(
                        fwd, final_usage or pending_usage or delivered_usage, content_chunks, "ok", 200
                    )
                    await state.metering.record(event, lease)
                if screen is not None:
                    out = screen.feed(out) + (screen.flush() if part.done else b"")
                if part.done:
                    out += sse.DONE
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    delivered_chunks = content_chunks
                    if pending_usage is not None:
                        delivered_usage = pending_usage
                    if not lease.settled and delivered_chunks:
                        delivered = _completion(delivered_usage, delivered_chunks)
                        now = time.monotonic()
                        if (
                            checkpoint_tokens < 0
                            or delivered - checkpoint_tokens >= settings.checkpoint_tokens
                            or now - checkpoint_at >= settings.checkpoint_seconds
                        ):
                            checkpoint_tokens, checkpoint_at = delivered, now
                            await self._checkpoint(fwd, delivered_usage, delivered_chunks)
        except asyncio.CancelledError:
            if not lease.settled:
                # Cut by the gateway's own shutdown: bill what the engine produced up to the cut
                # (recorded by _forward, which also bills the prompt when the engine had not
                # reported it).
                self._fill(
                    event, ctx, engine_usage or delivered_usage, content_chunks, "gateway_stopped", 503
                )
            raise
        except Exception:
            if not disconnected.is_set():
                if not lease.settled:
                    await self._finish_stream(
                        fwd, delivered_usage, delivered_chunks, "upstream_error", 502, engine_usage
                    )
                raise
        finally:
            watcher.cancel()
        if disconnected.is_set():
            if not lease.settled:
                # Bill what the engine produced until the hang-up stopped it (as far as it reached
                # us: at most the chunk in flight is missing) and the prompt it read in any case.
                await self._finish_stream(
                    fwd,
                    engine_usage or delivered_usage,
                    content_chunks,
                    "client_disconnected",
                    499,
                    engine_usage,
                )
            ctx.status = 499
            return
        if not lease.settled:
            # The engine ended the stream without [DONE] or usage: meter what we saw.
            await self._finish_stream(
                fwd, final_usage or delivered_usage, content_chunks, "ok", 200, engine_usage
            )
            await state.metering.record(event, lease)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _checkpoint(self, fwd: Forward, usage: Usage, chunks: int) -> None:
        event = fwd.event
        snapshot = replace(event)
        self._fill(snapshot, fwd.ctx, usage, chunks, "gateway_lost", 0)
        if not _has_tokens(usage, "prompt_tokens"):  # an engine without per-chunk usage
            snapshot.prompt_tokens = _estimate_tokens(fwd.body(), event.endpoint)
        try:
            await self.state.metering.checkpoint(snapshot)
        except Exception:  # a missed checkpoint only widens what a SIGKILL could lose
            logger.warning("could not checkpoint the usage of %s", event.request_id, exc_info=True)

    async def _finish_stream(
        self,
        fwd: Forward,
        usage: Usage,
        chunks: int,
        status: str,
        http: int,
        engine_usage: Usage = None,
    ) -> None:
        event = fwd.event
        self._fill(event, fwd.ctx, usage, chunks, status, http)
        if not _has_tokens(usage, "prompt_tokens"):
            if engine_usage is not None and _has_tokens(engine_usage, "prompt_tokens"):
                event.prompt_tokens = engine_usage["prompt_tokens"]  # reported, though never delivered
                event.cached_tokens = dialects.cached_tokens(engine_usage, event.prompt_tokens)
                event.usage_source = _worse(event.usage_source, "engine")
            else:
                await self._bill_prompt(fwd)

    @staticmethod
    def _fill(
        event: UsageEvent, ctx: RequestContext, usage: Usage, content_chunks: int, status: str, http: int
    ) -> None:
        usage = usage if isinstance(usage, dict) else {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        event.prompt_tokens = prompt if type(prompt) is int and prompt >= 0 else 0
        event.cached_tokens = dialects.cached_tokens(usage, event.prompt_tokens)
        source = "engine"
        if type(completion) is int and completion >= 0:
            event.completion_tokens = completion
        else:
            # Without usage from the engine, count content chunks (one token each in vLLM).
            event.completion_tokens = content_chunks
            if content_chunks:
                source = "chunks"
        event.usage_source = source
        event.status = status
        event.http_status = http
        event.latency_ms = int((time.perf_counter() - ctx.start) * 1000)

    # ------------------------------------------------------------------ counting without usage

    async def _bill_prompt(self, fwd: Forward) -> None:
        """The prompt of a request the engine got but did not report: its tokenizer, else ours.

        The worker that had the request may be the one that just died, so one other ready worker
        of the model (same weights, same tokenizer) is asked before falling back to the estimate.
        """
        event = fwd.event
        if event.prompt_tokens:
            return
        body = fwd.body()
        count = None
        for worker in await self._tokenizers(fwd):
            count = await self._tokenize_prompt(worker, body, event.endpoint)
            if count is not None:
                break
        if count is None:
            event.prompt_tokens, event.usage_source = _estimate_tokens(body, event.endpoint), "estimate"
        else:
            event.prompt_tokens, event.usage_source = count, _worse(event.usage_source, "tokenizer")

    async def _tokenizers(self, fwd: Forward) -> list[Worker]:
        current = fwd.worker
        first = [current] if current else []
        try:
            others = [w for w in await self.state.router.workers(fwd.event.model) if w is not current]
        except Exception:  # noqa: BLE001 - counting must not fail the recording
            others = []
        if current:
            others = [w for w in others if w.worker_id != current.worker_id]
        return first + others[:1]

    async def _count_answer(self, fwd: Forward, answer: object) -> None:
        """Completion tokens of an answer without usage: the engine's tokenizer on its text."""
        event = fwd.event
        texts = []
        choices = answer.get("choices") if isinstance(answer, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else choice.get("text")
                if isinstance(text, str) and text:
                    texts.append(text)
        if not texts:
            event.completion_tokens = 0
            return
        model = fwd.body().get("model")
        worker = fwd.worker
        counts: list[int | None] = [None]  # no worker to ask: the estimate
        if worker is not None:
            counts = await asyncio.gather(
                *(
                    self._tokenize(worker, {"model": model, "prompt": t, "add_special_tokens": False})
                    for t in texts
                )
            )
        if None in counts:
            event.completion_tokens, event.usage_source = sum((len(t) + 3) // 4 for t in texts), "estimate"
        else:
            event.completion_tokens, event.usage_source = (
                sum(c for c in counts if c is not None),
                _worse(event.usage_source, "tokenizer"),
            )

    async def _tokenize_prompt(self, worker, body: dict, endpoint: str) -> int | None:
        model = body.get("model")
        if endpoint == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list):
                return None
            return await self._tokenize(worker, {"model": model, "messages": messages})
        value = body.get("prompt") if endpoint == "completions" else body.get("input")
        texts = [value] if isinstance(value, str) else value
        if (
            not isinstance(texts, list)
            or not texts
            or len(texts) > 64
            or not all(isinstance(t, str) for t in texts)
        ):
            return None  # token-id prompts and big batches: the estimate
        counts = await asyncio.gather(*(self._tokenize(worker, {"model": model, "prompt": t}) for t in texts))
        return None if None in counts else sum(c for c in counts if c is not None)

    async def _tokenize(self, worker: Worker, request: dict[str, Any]) -> int | None:
        """``POST /tokenize`` on the worker (vLLM and Berth's CPU engine): ``{"count": n, …}``."""
        result = await self.state.upstream.post_json(
            worker.url + "/tokenize",
            worker.api_key,
            orjson.dumps(request),
            limit_s=self.settings.tokenize_timeout,
        )
        count = result.get("count") if isinstance(result, dict) else None
        return count if type(count) is int and count >= 0 else None


@dataclass(slots=True, eq=False)
class Forward:
    """One admitted request on its way to an engine and back: what every step of the proxy needs."""

    ctx: RequestContext
    info: ModelInfo
    payload: bytes  # the body as the engine gets it
    prefix: str | None  # what prefix-affinity routing hashes
    stream: bool
    client_usage: bool  # the client's own stream_options.include_usage …
    client_continuous: bool  # … and continuous_usage_stats
    lease: Lease
    event: UsageEvent  # the usage event, filled in as the request goes
    send: Send
    worker: Worker | None = None  # set while the request may be with the engine
    pinned: Worker | None = None  # the one worker that may take it (a stored response's)
    typed: dialects.TypedStream | None = None  # Responses and Messages: their typed events
    base_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    guard: RequestGuard | None = None  # the completion-side guardrails, when a policy has any
    tier: str = "default"  # the service tier served (contract.tiers): priority, echo, price
    _body: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The body the engine got, parsed once on demand (to count a prompt it did not report)."""
        if self._body is None:
            try:
                body = orjson.loads(self.payload)
            except orjson.JSONDecodeError:
                body = None
            self._body = body if isinstance(body, dict) else {}
        return self._body


_SOURCES = ("engine", "tokenizer", "chunks", "estimate")


def _worse(current: str | None, source: str) -> str:
    """A record is as reliable as its least reliable count."""
    if current not in _SOURCES:
        return source
    return max(current, source, key=_SOURCES.index)


def _has_tokens(usage, name: str) -> bool:
    return isinstance(usage, dict) and type(usage.get(name)) is int and usage[name] >= 0


def _completion(usage, chunks: int) -> int:
    if _has_tokens(usage, "completion_tokens"):
        return usage["completion_tokens"]
    return chunks


def _unanswered(exc: UpstreamError, event: UsageEvent, read_timeout: float) -> GatewayError:
    """The engine got the request and the answer never came: 504, not retried, prompt billed."""
    if exc.timeout:
        event.status = "upstream_timeout"
        message = (
            f"The model worker did not answer within {read_timeout:g} seconds. The request was not "
            "retried because the worker may have processed it; you were billed for the prompt."
        )
        code = "upstream_timeout"
    else:
        event.status = "upstream_error"
        message = (
            "The connection to the model worker broke after the request was sent. It was not retried "
            "because the worker may have processed it; you were billed for the prompt."
        )
        code = "upstream_disconnected"
    return GatewayError(504, message, type="server_error", code=code)
