"""Forwarding one inference request: validate, admit, route, stream back, meter.

The request body is checked first (``validation.py``: every field the gateway reads, before any
quota or engine work), then passes through unchanged except what Berth must set: the engine's
served model name; ``cache_salt`` on chat and completions, an HMAC of the tenant replacing any
client value, so that tenants sharing an engine never share its prefix cache (a tenant could
otherwise time whether another sent a prefix; vLLM's security guide, CVE-2025-46570); and for
streams ``stream_options`` with ``include_usage`` and ``continuous_usage_stats`` (so tokens are
known even when the client goes away mid-stream). What the client did not ask for — the extra
usage chunk, per-chunk usage — is stripped again on the way back.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import orjson

from gateway import metrics
from gateway.errors import GatewayError, bad_request, engine_error, error_body, model_not_found
from gateway.upstream import UpstreamError
from gateway.validation import Checked, validate

logger = logging.getLogger("berth.gateway.proxy")

# path -> endpoint label
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
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


def openai_error(status: int, raw: bytes) -> bytes:
    """Engine errors in OpenAI's shape, with engine internals replaced (``errors.engine_error``)."""
    return engine_error(status, raw)


class Proxy:
    def __init__(self, state):
        self.state = state
        self.settings = state.settings
        self._salt_key = self.settings.cache_salt_key()
        self._salt_groups = self.settings.cache_salt_group_map()
        self._salts: dict[str, str] = {}

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
        if endpoint == "embeddings":
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

    async def handle(self, ctx, endpoint: str, receive, send) -> None:
        state = self.state
        ctx.endpoint = endpoint
        headers = dict(ctx.scope["headers"])
        principal = await state.auth.authenticate(headers)
        ctx.principal = principal
        state.metering.touch(principal.key.key_id)
        raw = await self._read_body(ctx.scope, receive)
        body = self._parse(raw, headers)
        checked = validate(body, endpoint, max_tokens_limit=self.settings.max_tokens_limit)
        model, stream = checked.model, checked.stream
        info = await state.router.model(model)
        allowed = principal.key.allowed_models
        if (
            info is None
            or not info.visible_to(principal.tenant.tenant_id)
            or (allowed and model not in allowed)
        ):
            raise model_not_found(model)
        ctx.model = model
        if self.settings.log_content:
            ctx.content = raw[:2000].decode("utf-8", "replace")

        lease = await state.quotas.admit(
            principal,
            ctx.request_id,
            self._reservation(body, endpoint, checked, info),
            price_input_micros=info.price_input_micros,
            price_output_micros=info.price_output_micros,
        )

        modified = False
        if info.served_name != model:
            body["model"] = info.served_name
            modified = True
        if endpoint != "embeddings":
            # Prefix-cache isolation: the engine shares cached prefixes only within one salt.
            body["cache_salt"] = self._cache_salt(principal.tenant.tenant_id)
            modified = True
        client_usage = client_continuous = False
        if stream:
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            client_usage = options.get("include_usage") is True
            client_continuous = options.get("continuous_usage_stats") is True
            options["include_usage"] = True
            options["continuous_usage_stats"] = True
            body["stream_options"] = options
            modified = True
        payload = orjson.dumps(body) if modified else raw

        event = {
            "id": ctx.request_id,
            "t": principal.tenant.tenant_id,
            "k": principal.key.key_id,
            "m": model,
            "ep": endpoint,
            "p": 0,
            "c": 0,
            "s": "error",
            "h": 0,
            "l": 0,
            "f": None,
            "w": None,
            "ts": int(time.time() * 1000),
        }
        try:
            prefix = (
                _prefix(body, endpoint, self.settings.prefix_chars)
                if self.settings.routing == "prefix"
                else None
            )
            await self._forward(
                ctx, info, payload, prefix, stream, client_usage, client_continuous, lease, event, send
            )
        except GatewayError as exc:
            event["h"] = exc.status
            raise
        finally:
            if not lease.settled:
                # Whatever happened (client gone, upstream error, bug), meter and free the lease.
                event["l"] = int((time.perf_counter() - ctx.start) * 1000)
                event["h"] = event["h"] or ctx.status or 500
                try:
                    await asyncio.shield(state.metering.record(event, lease))
                except Exception:
                    state.quotas.in_flight.pop(lease.request_id, None)
                    raise
            ctx.prompt_tokens, ctx.completion_tokens = event["p"], event["c"]
            if event["p"] or event["c"]:
                metrics.TOKENS.labels(model, "prompt").inc(event["p"])
                metrics.TOKENS.labels(model, "completion").inc(event["c"])

    async def _workers(self, ctx, model: str):
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

    async def _open(self, ctx, info, payload: bytes, stream: bool, endpoint_path: str, prefix: str | None):
        """Send to a worker; once more to another if the first fails before its first byte."""
        router = self.state.router
        tried: set[str] = set()
        last_error = "no worker"
        for attempt in range(2):
            workers = await self._workers(ctx, info.name)
            worker = router.choose(workers, prefix, tried)
            if worker.worker_id in tried:
                break
            tried.add(worker.worker_id)
            headers = {
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
                "X-Request-Id": ctx.request_id,
            }
            if worker.api_key:
                headers["Authorization"] = f"Bearer {worker.api_key}"
            router.acquire(worker)
            try:
                response = await self.state.upstream.send(
                    "POST", worker.url + endpoint_path, headers, payload
                )
            except UpstreamError as exc:
                router.release(worker)
                last_error = str(exc)
                if attempt == 0:
                    metrics.UPSTREAM_RETRIES.labels(info.name).inc()
                continue
            if response.status in RETRYABLE_STATUS and attempt == 0 and len(workers) > 1:
                await response.close()
                router.release(worker)
                metrics.UPSTREAM_RETRIES.labels(info.name).inc()
                last_error = f"HTTP {response.status}"
                continue
            return worker, response
        raise GatewayError(
            502,
            f"The model worker could not be reached ({last_error}). Retry the request.",
            type="server_error",
            code="upstream_unavailable",
        )

    async def _forward(
        self, ctx, info, payload, prefix, stream, client_usage, client_continuous, lease, event, send
    ):
        state = self.state
        path = ctx.path
        worker, response = await self._open(ctx, info, payload, stream, path, prefix)
        ctx.worker = event["w"] = worker.worker_id
        base_headers = [(b"x-request-id", ctx.request_id.encode()), *lease.headers]
        try:
            if response.status != 200 or not stream:
                await self._plain(ctx, response, base_headers, lease, event, send)
            else:
                await self._stream(
                    ctx, response, base_headers, client_usage, client_continuous, lease, event, send
                )
        finally:
            await response.close()
            state.router.release(worker)

    async def _plain(self, ctx, response, base_headers, lease, event, send) -> None:
        try:
            raw = await response.read()
        except Exception as exc:
            raise GatewayError(
                502,
                "The model worker failed while answering. Retry the request.",
                type="server_error",
                code="upstream_error",
            ) from exc
        status = response.status
        extra = [(k, v) for k, v in response.headers if k not in HOP_BY_HOP and k != b"content-type"]
        if status == 200:
            try:
                usage = orjson.loads(raw).get("usage") or {}
            except (orjson.JSONDecodeError, AttributeError):
                usage = {}
            event["p"] = int(usage.get("prompt_tokens") or 0)
            event["c"] = int(usage.get("completion_tokens") or 0)
            event["s"] = "ok"
        elif status in (401, 403):
            # The engine refused *our* key: the client's key was fine, so this is our fault.
            logger.error("worker %s refused the gateway's engine key (HTTP %s)", event["w"], status)
            status = 502
            raw = error_body(
                "The model worker rejected the gateway's credentials. The operator has been told.",
                type="server_error",
                code="upstream_auth",
            )
            event["s"] = "upstream_error"
        else:
            raw = openai_error(status, raw)
            event["s"] = "upstream_error"
        event["h"] = status
        event["l"] = int((time.perf_counter() - ctx.start) * 1000)
        ctx.status = status
        # Usage is in Redis before the body leaves.
        await self.state.metering.record(event, lease)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                    *base_headers,
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    async def _stream(
        self, ctx, response, base_headers, client_usage, client_continuous, lease, event, send
    ) -> None:
        state = self.state
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
        ctx.status = 200
        delivered_usage = None  # usage as of the last chunk the client received
        final_usage = None
        content_chunks = 0
        first = True
        buffer = b""
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *base_headers]}
            )
            async for chunk in response.chunks():
                buffer += chunk
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                out = []
                pending_usage = None
                done = False
                for raw_event in events:
                    if not raw_event.startswith(b"data:"):
                        if raw_event.strip():
                            out.append(raw_event + b"\n\n")
                        continue
                    data = raw_event[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    try:
                        obj = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        out.append(raw_event + b"\n\n")
                        continue
                    if not isinstance(obj, dict):
                        out.append(raw_event + b"\n\n")
                        continue
                    usage = obj.get("usage")
                    if obj.get("choices") == [] and usage:
                        final_usage = usage  # the include_usage chunk
                        if client_usage:
                            out.append(raw_event + b"\n\n")
                        continue
                    if usage:
                        pending_usage = usage
                    if "usage" in obj and not client_continuous:
                        if client_usage:
                            obj["usage"] = None
                        else:
                            del obj["usage"]
                        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
                    else:
                        out.append(raw_event + b"\n\n")
                    content_chunks += 1
                if disconnected.is_set():
                    break
                if first and content_chunks:
                    first = False
                    ctx.ttft = time.perf_counter() - ctx.start
                    event["f"] = int(ctx.ttft * 1000)
                    metrics.TTFT.labels(event["m"]).observe(ctx.ttft)
                if (final_usage is not None or done) and not lease.settled:
                    # The last bytes are about to go: meter first.
                    self._fill(
                        event,
                        ctx,
                        final_usage or pending_usage or delivered_usage or {},
                        content_chunks,
                        "ok",
                        200,
                    )
                    await state.metering.record(event, lease)
                if done:
                    out.append(b"data: [DONE]\n\n")
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                    if pending_usage is not None:
                        delivered_usage = pending_usage
        except Exception:
            if not disconnected.is_set():
                if not lease.settled:
                    self._fill(event, ctx, delivered_usage or {}, content_chunks, "upstream_error", 502)
                raise
        finally:
            watcher.cancel()
        if disconnected.is_set():
            if not lease.settled:
                # Bill only what the client received.
                self._fill(event, ctx, delivered_usage or {}, content_chunks, "client_disconnected", 499)
            ctx.status = 499
            return
        if not lease.settled:
            # The engine ended the stream without [DONE] or usage: meter what we saw.
            self._fill(event, ctx, final_usage or delivered_usage or {}, content_chunks, "ok", 200)
            await state.metering.record(event, lease)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _fill(event, ctx, usage: dict, content_chunks: int, status: str, http: int) -> None:
        event["p"] = int(usage.get("prompt_tokens") or 0)
        completion = usage.get("completion_tokens")
        # Without per-chunk usage from the engine, count content chunks (one token each in vLLM).
        event["c"] = int(completion) if completion is not None else (content_chunks if status != "ok" else 0)
        event["s"] = status
        event["h"] = http
        event["l"] = int((time.perf_counter() - ctx.start) * 1000)
