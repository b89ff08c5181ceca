"""The gateway's ASGI application: a raw ASGI callable (no framework) on uvicorn + uvloop + httptools.

Request path: authenticate (``auth``) → validate → model visible? (``routing``) → quotas
(``quotas``) → pick a ready worker, holding the request while a scaled-to-zero model starts
(``routing``) → forward and stream back chunk by chunk (``proxy``) → usage event + quota
settlement before the last bytes (``metering``). It deliberately does not import Django: the hot
path never touches the ORM or PostgreSQL. Shared parts (Redis, the upstream client, caches) are
created in the lifespan and kept on ``app.state``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway import control_plane, dialects, metrics, responses
from gateway.admission import Admission
from gateway.auth import Authenticator, Principal
from gateway.config import GatewaySettings, get_settings
from gateway.cors import Cors, CorsSend
from gateway.errors import GatewayError, error_body
from gateway.guardrails import Guardrails
from gateway.metering import Metering
from gateway.proxy import ENDPOINTS, Proxy
from gateway.quotas import Quotas
from gateway.redis_pipe import REDIS_DOWN, make_pipe
from gateway.routing import Router
from gateway.upstream import UpstreamError, make_upstream

access_logger = logging.getLogger("berth.gateway.access")
logger = logging.getLogger("berth.gateway")

JSON = b"application/json"
SHUTDOWN_RECORD_SECONDS = 10


def _invalidations(router: Router, guardrails: Guardrails) -> Callable[[str, str], None]:
    """Invalidations the authenticator does not handle: guardrails, else models and routes."""

    def invalidate(kind: str, ident: str) -> None:
        if kind == "guardrails":
            guardrails.invalidate(ident)
        else:
            router.invalidate(kind, ident)

    return invalidate


class Gateway:
    """The ASGI app. ``state`` holds what the lifespan created."""

    def __init__(self, settings: GatewaySettings | None = None):
        self._settings = settings
        self.state = SimpleNamespace()

    # ------------------------------------------------------------------ lifespan

    async def startup(self) -> None:
        settings = self._settings or get_settings()
        _configure_logging(settings)
        state = self.state
        state.settings = settings
        state.cors = Cors(settings.cors_origin_list())
        # A blocking pool: a burst of requests queues for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=5,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
        )
        state.redis = aioredis.Redis(connection_pool=pool)
        state.upstream = make_upstream(settings)
        state.auth = Authenticator(state.redis, settings)
        state.hot = make_pipe(settings.redis_url, state.redis)
        state.quotas = Quotas(state.redis, settings, state.hot)
        try:
            await state.quotas.load_scripts()
        except Exception:  # Redis not up yet: the scripts are loaded on first NOSCRIPT
            logger.warning("could not load quota scripts into Redis at start-up", exc_info=True)
        state.router = Router(state.redis, settings, state.upstream)
        state.guardrails = Guardrails(state.redis, settings, state.router, state.upstream)
        state.auth.on_other = _invalidations(state.router, state.guardrails)
        state.metering = Metering(state.redis, settings, state.quotas)
        state.responses = responses.Responses(state)
        state.admission = Admission(state.redis, settings, state.router)
        state.proxy = Proxy(state)
        state.tasks = [
            asyncio.create_task(state.auth.listen_invalidations(), name="invalidations"),
            asyncio.create_task(state.router.run_background(), name="engine-loads"),
            asyncio.create_task(state.quotas.run_background(), name="lease-renewal"),
            asyncio.create_task(state.metering.run_background(), name="last-used"),
            asyncio.create_task(state.metering.run_heartbeat(), name="usage-checkpoints"),
            asyncio.create_task(state.admission.run_background(), name="admission"),
        ]

    async def shutdown(self) -> None:
        state = self.state
        # uvicorn has stopped accepting and waited out its grace period (--timeout-graceful-shutdown),
        # then cancelled what was left; those requests are still recording what they delivered
        # (the engine's /tokenize included): keep Redis and the upstream client until they are done.
        deadline = time.monotonic() + SHUTDOWN_RECORD_SECONDS
        while getattr(getattr(state, "proxy", None), "active", 0) and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.05)
        for task in getattr(state, "tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(state, "tasks", []), return_exceptions=True)
        if hasattr(state, "admission"):
            await state.admission.close()
        if hasattr(state, "metering"):
            try:
                await state.metering.flush_last_used()
            except Exception:  # shutting down: Redis may be gone already
                logger.warning("could not flush key last-use times at shutdown")
        if hasattr(state, "guardrails"):
            await state.guardrails.drain()
        if hasattr(state, "upstream"):
            await state.upstream.close()
        if hasattr(state, "hot"):
            await state.hot.close()
        if hasattr(state, "redis"):
            await state.redis.aclose()
            await state.redis.connection_pool.disconnect()
        ACCESS_LOG.flush()

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ requests

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def http(self, scope, receive, send) -> None:
        path = scope["path"]
        method = scope["method"]
        request_id = "req_" + os.urandom(16).hex()  # uuid4().hex's shape, without building a UUID
        cors = self.state.cors
        if cors.enabled:
            origin = cors.origin_of(scope)
            if origin is not None:
                if method == "OPTIONS":
                    await self._preflight(cors, origin, scope, send, request_id)
                    return
                if cors.allowed(origin):
                    send = CorsSend(send, cors.response_headers(origin))
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', JSON, [(b"x-request-id", request_id.encode())])
            return
        if path == "/metrics" and method == "GET":
            refusal = self._metrics_refusal(scope)
            if refusal is not None:
                status, body = refusal
                await _respond(send, status, body, JSON, [(b"x-request-id", request_id.encode())])
                return
            body, content_type = metrics.render()
            await _respond(send, 200, body, content_type, [(b"x-request-id", request_id.encode())])
            return
        ctx = RequestContext(request_id, method, path, scope)
        ctx.receive = receive
        # The Messages paths answer errors in Anthropic's shape, whoever raised them.
        sender = _TrackingSend(dialects.AnthropicErrorSend(send) if dialects.is_anthropic(path) else send)
        endpoint = ENDPOINTS.get(path)
        ctx.endpoint = endpoint or ("models" if path == "/v1/models" else "other")
        try:
            if path == "/v1/models":
                if method != "GET":
                    raise _method_not_allowed(method, path)
                await self.list_models(ctx, sender)
            elif endpoint is not None:
                if method != "POST":
                    raise _method_not_allowed(method, path)
                await self.state.proxy.handle(ctx, endpoint, sender)
            elif path == dialects.COUNT_TOKENS_PATH:
                if method != "POST":
                    raise _method_not_allowed(method, path)
                await self.state.responses.count_tokens(ctx, sender)
            elif (stored := responses.parse_path(path)) is not None:
                await self.state.responses.stored(ctx, sender, *stored)
            elif control_plane.handles(path):
                await control_plane.forward(self.state, ctx, sender)
            else:
                raise GatewayError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        except GatewayError as exc:
            ctx.status = exc.status
            ctx.error_code = exc.code
            if exc.status == 429:
                metrics.QUOTA_REFUSALS.labels(ctx.model or "", exc.code or "").inc()
            if not sender.started:
                await _respond(
                    sender,
                    exc.status,
                    exc.body(),
                    JSON,
                    [(b"x-request-id", request_id.encode()), *exc.headers],
                )
        except UpstreamError as exc:
            # The engine's connection broke where the proxy did not expect it. Usage is recorded
            # already (the proxy meters in a finally); a started stream just ends here.
            logger.warning("request %s: the engine's answer broke off (%s)", request_id, exc)
            ctx.status = ctx.status or 502
            if not sender.started:
                body = error_body(
                    f"The model worker's answer broke off (request id {request_id}). Retry the request.",
                    type="server_error",
                    code="upstream_error",
                )
                await _respond(sender, 502, body, JSON, [(b"x-request-id", request_id.encode())])
        except REDIS_DOWN as exc:
            # Keys, quotas and usage live in Redis: without it nothing can be admitted or metered.
            logger.warning("request %s refused: Redis is unreachable (%s)", request_id, exc)
            ctx.status = 503
            if not sender.started:
                body = error_body(
                    "The service is briefly unavailable. Retry in a second.",
                    type="server_error",
                    code="service_unavailable",
                )
                headers = [(b"x-request-id", request_id.encode()), (b"retry-after", b"1")]
                await _respond(sender, 503, body, JSON, headers)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            ctx.status = 500
            if not sender.started:
                body = error_body(
                    f"The gateway had an internal error (request id {request_id}). Retry it; if it keeps "
                    "failing, give the operator this request id.",
                    type="server_error",
                    code="internal_error",
                )
                await _respond(sender, 500, body, JSON, [(b"x-request-id", request_id.encode())])
        finally:
            # Requests refused before a model was known (401, bad JSON) count under model="".
            status_label = str(ctx.status)
            metrics.child(metrics.REQUESTS, ctx.model or "", ctx.endpoint, status_label).inc()
            metrics.child(metrics.LATENCY, ctx.model or "", status_label).observe(
                time.perf_counter() - ctx.start
            )
            if self.state.settings.access_log:
                ctx.log()

    def _metrics_refusal(self, scope) -> tuple[int, bytes] | None:
        """``/metrics`` names engines, models and tenants' traffic: only with the internal token.

        Start-up already refused a gateway with DEBUG off and no token, so without a token this is
        a development gateway and ``/metrics`` stays open.
        """
        token = self.state.settings.internal_token
        if not token:
            return None
        presented = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
                break
        if presented is None:
            return 401, error_body(
                "Send the internal token as 'Authorization: Bearer <BERTH_INTERNAL_TOKEN>'.",
                type="invalid_request_error",
                code="missing_token",
            )
        if not hmac.compare_digest(presented, token.encode()):
            return 403, error_body(
                "The internal token is not valid.", type="invalid_request_error", code="invalid_token"
            )
        return None

    async def _preflight(self, cors: Cors, origin: bytes, scope, send, request_id: str) -> None:
        headers = [(b"x-request-id", request_id.encode())]
        if not cors.allowed(origin):
            body = error_body(
                "This origin may not call the gateway from a browser (BERTH_GATEWAY_CORS_ORIGINS).",
                type="invalid_request_error",
                code="origin_not_allowed",
            )
            await _respond(send, 403, body, JSON, headers)
            return
        await _respond(send, 204, b"", JSON, [*headers, *cors.preflight_headers(origin, scope)])

    async def list_models(self, ctx: RequestContext, send) -> None:
        headers = _headers(ctx.scope)
        principal = await self.state.auth.authenticate(headers)
        ctx.principal = principal
        self.state.metering.touch(principal.key.key_id)
        models = await self.state.router.visible_models(
            principal.tenant.tenant_id, principal.key.allowed_models
        )
        body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    # "parent": the base model of a LoRA adapter, null for a model (as vLLM lists them)
                    {
                        "id": m.name,
                        "object": "model",
                        "created": m.created,
                        "owned_by": m.owned_by,
                        "parent": m.parent,
                        # The weights' manifest (sha256 of its canonical JSON); null when unrecorded.
                        "manifest_digest": m.manifest_digest or None,
                    }
                    for m in models
                ],
            }
        )
        ctx.status = 200
        await _respond(send, 200, body, JSON, [(b"x-request-id", ctx.request_id.encode())])


class RequestContext:
    """What the access log and metrics need about one request."""

    __slots__ = (
        "request_id",
        "method",
        "path",
        "scope",
        "start",
        "status",
        "error_code",
        "model",
        "endpoint",
        "principal",
        "worker",
        "prompt_tokens",
        "completion_tokens",
        "ttft",
        "content",
        "receive",
    )

    request_id: str
    method: str
    path: str
    scope: dict[str, Any]
    start: float
    status: int
    error_code: str | None
    model: str | None
    endpoint: str | None
    principal: Principal | None
    worker: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft: float | None
    content: str | None
    receive: Callable[[], Awaitable[dict[str, Any]]]

    def __init__(self, request_id: str, method: str, path: str, scope: dict[str, Any]):
        self.request_id = request_id
        self.method = method
        self.path = path
        self.scope = scope
        self.start = time.perf_counter()
        self.status = 0
        self.error_code = None
        self.model = None
        self.endpoint = None
        self.principal = None
        self.worker = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = None
        self.content = None
        self.receive = _no_body

    def log(self) -> None:
        # Structured and content-free: never headers (keys), never bodies unless the operator asked.
        record = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "code": self.error_code,
            "model": self.model,
            "tenant": self.principal.tenant.tenant_id if self.principal else None,
            "key": self.principal.key.key_id if self.principal else None,
            "worker": self.worker,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round((time.perf_counter() - self.start) * 1000, 2),
            "ttft_ms": round(self.ttft * 1000, 2) if self.ttft is not None else None,
            "client": (self.scope.get("client") or ("", 0))[0],
        }
        if self.content is not None:
            record["content"] = self.content
        ACCESS_LOG.emit(orjson.dumps(record).decode())


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _TrackingSend:
    """Wraps ``send`` to know whether the response has started (then errors cannot be sent)."""

    __slots__ = ("send", "started")

    def __init__(self, send):
        self.send = send
        self.started = False

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


def _headers(scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")


async def _respond(send, status: int, body: bytes, content_type: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """The access log line of every request, without the logging machinery's per-record cost.

    Through ``logging`` a line cost ~8 % of a proxied request's CPU (record, format, lock, a flush
    and a write system call per line). When the gateway configured logging itself (its own
    handler on stdout, nothing attached to the access logger), lines are formatted here exactly
    as that handler would (``<asctime> INFO berth.gateway.access: <json>``) and written together
    once per event-loop iteration: one write for every request that finished in it, no later.
    Otherwise (logging configured by the embedding program, tests) it goes through ``logging``.
    """

    def __init__(self) -> None:
        self.stream = None
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def direct(self, stream) -> None:
        self.stream = stream

    def emit(self, message: str) -> None:
        stream = self.stream
        if stream is None or access_logger.handlers or not access_logger.isEnabledFor(logging.INFO):
            access_logger.info("%s", message)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        self._pending.append(
            f"{self._stamp},{int(now * 1000) % 1000:03d} INFO berth.gateway.access: {message}\n"
        )
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (called from a thread or at shutdown)
                self.flush()

    def flush(self) -> None:
        if not self._pending or self.stream is None:
            return
        lines = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: as logging, never fail a request
            pass


ACCESS_LOG = AccessLog()


def _configure_logging(settings: GatewaySettings) -> None:
    root = logging.getLogger("berth.gateway")
    root.setLevel(settings.log_level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.propagate = False
        ACCESS_LOG.direct(handler.stream)


app = Gateway()
