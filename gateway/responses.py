"""Stored responses and the calls that are answered by an engine but never metered.

vLLM keeps a stored ``/v1/responses`` answer in the memory of the worker that generated it, so
``GET /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` and a follow-up turn's
``previous_response_id`` must reach that same worker. Each answer's id is recorded in Redis
(``response:<id>`` → tenant, key, model, worker; ``contract``) before its last bytes leave, with a
TTL (``BERTH_GATEWAY_RESPONSE_TTL_SECONDS``). Only the tenant that created a response can reach it:
any other tenant, like an unknown id, gets the same 404.

Not metered, and why:

* **retrieving or cancelling** a response runs no inference; the create was billed from its
  ``response.completed`` usage, and the stored answer carries that same usage, so a record here
  (even of 0 tokens) would only blur the usage pages. Requests are counted in the metrics and the
  access log (endpoint ``responses_retrieve`` / ``responses_cancel``);
* **``/v1/messages/count_tokens``** runs only the engine's tokenizer, like ``/tokenize``, which
  the gateway itself calls to meter: it is not billed (endpoint label ``count_tokens``).

All three still take a request from the tenant's requests per minute and a concurrency slot for
their duration (a lease of 0 tokens, settled at 0 with no usage event), so they cannot be used to
hammer a worker past the plan, and a tenant blocked by its spend limit is refused them too.

``background: true`` is refused at validation (``gateway.validation``): the engine would generate
after the request ended, where nothing could meter it, so cancel only ever reaches responses
that already finished (the engine answers that itself).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from contract.redis_names import RedisNames
from gateway.errors import GatewayError, engine_error, error_body
from gateway.redis_pipe import is_noscript
from gateway.routing import Worker
from gateway.upstream import UpstreamError
from gateway.validation import validate

if TYPE_CHECKING:
    from gateway.app import RequestContext
    from gateway.auth import Principal
    from gateway.proxy import Forward

logger = logging.getLogger("berth.gateway.responses")

PREFIX = "/v1/responses/"
MAX_ID = 200


def parse_path(path: str) -> tuple[str, str] | None:
    """``/v1/responses/{id}`` → (id, "retrieve"); ``…/{id}/cancel`` → (id, "cancel"); else None."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    response_id, _, tail = rest.partition("/")
    if not response_id or len(response_id) > MAX_ID:
        return None
    if tail == "":
        return response_id, "retrieve"
    if tail == "cancel":
        return response_id, "cancel"
    return None


def _not_found(response_id: str) -> GatewayError:
    return GatewayError(
        404,
        f"No response found with id '{response_id[:MAX_ID]}'.",
        code="response_not_found",
    )


class Responses:
    def __init__(self, state):
        self.state = state
        self.settings = state.settings
        self.names = RedisNames(state.settings.redis_prefix)

    # ------------------------------------------------------------------ the record

    async def remember(self, fwd: Forward, response_id: str) -> None:
        """Record which worker holds ``response_id`` and whose it is (failures are logged only)."""
        if not response_id or len(response_id) > MAX_ID or fwd.worker is None:
            return
        if fwd.body().get("store") is False:
            return  # the engine keeps nothing to come back to
        key = self.names.response(response_id)
        event = fwd.event
        try:
            pipe = self.state.redis.pipeline(transaction=True)
            pipe.hset(
                key,
                mapping={
                    "tenant_id": event.tenant_id,
                    "key_id": event.key_id or "",
                    "model": event.model,
                    "worker_id": fwd.worker.worker_id,
                },
            )
            pipe.expire(key, self.settings.response_ttl_seconds)
            await pipe.execute()
        except Exception:  # the answer itself is fine; only its later retrieval would 404
            logger.warning("could not record the worker of response %s", response_id, exc_info=True)

    async def remember_answer(self, fwd: Forward, answer: Any) -> None:
        if (
            fwd.event.endpoint == "responses"
            and isinstance(answer, dict)
            and isinstance(answer.get("id"), str)
        ):
            await self.remember(fwd, answer["id"])

    async def lookup(self, response_id: str, tenant_id: str) -> dict[str, str] | None:
        raw = await self.state.redis.hgetall(self.names.response(response_id))
        record = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        if not record or record.get("tenant_id") != tenant_id:
            return None
        return record

    async def _worker(self, model: str, worker_id: str) -> Worker | None:
        for worker in await self.state.router.workers(model):
            if worker.worker_id == worker_id:
                return worker
        return None

    async def pinned_worker(self, body: dict, principal: Principal, model: str) -> Worker | None:
        """The worker holding ``previous_response_id``'s response, or None without one."""
        previous = body.get("previous_response_id")
        if not previous:
            return None
        record = await self.lookup(previous, principal.tenant.tenant_id)
        worker = await self._worker(model, record["worker_id"]) if record else None
        if worker is None:
            raise GatewayError(
                404,
                f"Previous response with id '{previous[:MAX_ID]}' not found. Responses are kept by the "
                "worker that generated them, for the same model, and only while it runs.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return worker

    # ------------------------------------------------------------------ retrieve and cancel

    async def stored(self, ctx: RequestContext, send, response_id: str, action: str) -> None:
        state = self.state
        ctx.endpoint = f"responses_{action}"
        principal = await state.auth.authenticate(dict(ctx.scope["headers"]))
        ctx.principal = principal
        state.metering.touch(principal.key.key_id)
        if action == "retrieve" and ctx.method == "DELETE":
            raise GatewayError(
                405,
                "Deleting a stored response is not supported by the model workers; it expires on its own.",
                code="method_not_allowed",
            )
        if ctx.method != ("POST" if action == "cancel" else "GET"):
            raise GatewayError(
                405, f"Method {ctx.method} is not allowed on {ctx.path}.", code="method_not_allowed"
            )
        record = await self.lookup(response_id, principal.tenant.tenant_id)
        allowed = principal.key.allowed_models
        if record is None or (allowed and record.get("model") not in allowed):
            raise _not_found(response_id)
        model = record["model"]
        info = await state.router.model(model)
        if info is None or not info.visible_to(principal.tenant.tenant_id):
            raise _not_found(response_id)
        ctx.model = model
        worker = await self._worker(model, record.get("worker_id", ""))
        if worker is None:
            raise GatewayError(
                404,
                f"Response '{response_id}' is no longer available: the worker that generated it has "
                "stopped, and stored responses live in its memory.",
                code="response_not_found",
            )
        path = PREFIX + quote(response_id, safe="") + ("/cancel" if action == "cancel" else "")
        query = ctx.scope.get("query_string") or b""
        url = worker.url + path + (("?" + query.decode("latin-1")) if query else "")
        await self._admitted(ctx, principal, worker, ctx.method, url, b"", send)

    # ------------------------------------------------------------------ count_tokens

    async def count_tokens(self, ctx: RequestContext, send) -> None:
        state = self.state
        proxy = state.proxy
        ctx.endpoint = "count_tokens"
        headers = dict(ctx.scope["headers"])
        principal = await state.auth.authenticate(headers)
        ctx.principal = principal
        state.metering.touch(principal.key.key_id)
        body = proxy._parse(await proxy._read_body(ctx.scope, ctx.receive), headers)
        checked = validate(body, "count_tokens", max_tokens_limit=self.settings.max_tokens_limit)
        model = checked.model
        info = await proxy.visible_model(principal, model)
        ctx.model = model
        # An adapter shares its base's tokenizer: count on a base worker, loaded or not.
        base = await state.router.model(info.parent) if info.parent else None
        body["model"] = (base or info).served_name
        workers = await proxy._workers(info.route_name)
        worker = state.router.choose(workers, None, set())
        await self._admitted(ctx, principal, worker, "POST", worker.url + ctx.path, orjson.dumps(body), send)

    async def _admitted(
        self,
        ctx: RequestContext,
        principal: Principal,
        worker: Worker,
        method: str,
        url: str,
        body: bytes,
        send,
    ) -> None:
        """Relay under a lease of 0 tokens: a request per minute and a concurrency slot, no usage."""
        quotas = self.state.quotas
        lease = await quotas.admit(principal, ctx.request_id, 0)
        try:
            await self._relay(ctx, send, worker, method, url, body, lease.headers)
        finally:
            command = quotas.settle_command(lease, prompt_tokens=0, completion_tokens=0)
            try:
                result = (await quotas.hot.execute(command))[0]
                if is_noscript(result):
                    await quotas.retry_settle(command)
                elif isinstance(result, Exception):
                    raise result
            except Exception:  # the lease expires on its own (lease_seconds)
                logger.warning("could not release the lease of %s", ctx.request_id, exc_info=True)

    # ------------------------------------------------------------------ the engine's answer

    async def _relay(
        self, ctx: RequestContext, send, worker: Worker, method: str, url: str, body: bytes, extra: list
    ) -> None:
        state = self.state
        ctx.worker = worker.worker_id
        headers = {"X-Request-Id": ctx.request_id, "Accept": "application/json, text/event-stream"}
        if body:
            headers["Content-Type"] = "application/json"
        if worker.api_key:
            headers["Authorization"] = f"Bearer {worker.api_key}"
        state.router.acquire(worker)
        try:
            try:
                response = await state.upstream.send(method, url, headers, body)
            except UpstreamError as exc:
                logger.warning("request %s: worker %s unreachable: %s", ctx.request_id, worker.worker_id, exc)
                raise GatewayError(
                    502,
                    f"The model worker could not be reached (request id {ctx.request_id}). Retry the request.",
                    type="server_error",
                    code="upstream_unavailable",
                ) from exc
            try:
                await self._answer(ctx, send, response, extra)
            finally:
                await response.close()
        finally:
            state.router.release(worker)

    async def _answer(self, ctx: RequestContext, send, response, extra: list) -> None:
        status = response.status
        base = [(b"x-request-id", ctx.request_id.encode()), *extra]
        content_type = b"application/json"
        for name, value in response.headers:
            if name == b"content-type":
                content_type = value
        if status == 200 and content_type.startswith(b"text/event-stream"):
            ctx.status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache"), *base],
                }
            )
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        raw = await response.read()
        if status in (401, 403):
            logger.error("worker %s refused the gateway's engine key (HTTP %s)", ctx.worker, status)
            status, raw = (
                502,
                error_body(
                    "The model worker rejected the gateway's credentials. The operator has been told.",
                    type="server_error",
                    code="upstream_auth",
                ),
            )
        elif status != 200:
            raw = engine_error(status, raw, request_id=ctx.request_id)
        ctx.status = status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                    *base,
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})
