"""``/v1/files*`` and ``/v1/batches*``: authenticated here, answered by the control plane.

The Files and Batch APIs keep their state in PostgreSQL and their bytes in the files storage,
neither of which the gateway touches, but tenants reach them at the same base URL as inference
(the ``openai`` SDK has one ``base_url``). So the gateway authenticates the key exactly as for
inference (unknown key 401, suspended tenant 403) and forwards the request — method, path, query,
content type and the body, streamed as it arrives — to the web role's ``/internal/v1/...`` views
(``batches/internal.py``) at ``BERTH_GATEWAY_CONTROL_PLANE_URL`` with the internal token and the
tenant and key ids, then streams the answer back. Nothing here is metered (no inference runs) and
no quota applies; a 200 MB upload passes through without being held in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.upstream import UpstreamError

if TYPE_CHECKING:
    from gateway.app import RequestContext

PREFIXES = ("/v1/files", "/v1/batches")
REQUEST_HEADERS = (b"content-type", b"content-length", b"accept")
MULTIPART_OVERHEAD = 64 * 1024  # as batches.internal allows around the file
RESPONSE_HEADERS = (b"content-type", b"content-length", b"content-disposition", b"cache-control")


def handles(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PREFIXES)


async def _body(first: bytes, receive: Any) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _check_length(scope: dict[str, Any], limit: int) -> None:
    """A body announced (Content-Length) beyond the upload limit plus multipart framing is a 413."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise GatewayError(400, "Content-Length is not a number.", code="invalid_request") from None
            if length > limit + MULTIPART_OVERHEAD:
                raise GatewayError(
                    413,
                    f"The request body is {length} bytes; files may have at most {limit} bytes.",
                    param="file",
                    code="file_too_large",
                )
            return


async def forward(state: Any, ctx: RequestContext, send: Any) -> None:
    """Authenticate, then relay the request to the control plane and its answer to the client."""
    scope = ctx.scope
    principal = await state.auth.authenticate(dict(scope["headers"]))
    ctx.principal = principal
    ctx.endpoint = "files" if ctx.path.startswith("/v1/files") else "batches"
    state.metering.touch(principal.key.key_id)
    settings = state.settings
    if not settings.internal_token:
        raise GatewayError(
            503,
            "The Files and Batch APIs are not configured on this deployment (BERTH_INTERNAL_TOKEN).",
            type="server_error",
            code="service_unavailable",
        )
    _check_length(scope, settings.files_max_bytes)
    raw_path = scope.get("raw_path") or ctx.path.encode()
    url = settings.control_plane_url.rstrip("/") + "/internal" + raw_path.decode("latin-1")
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    headers = {
        "Authorization": f"Bearer {settings.internal_token}",
        "X-Berth-Tenant": principal.tenant.tenant_id,
        "X-Berth-Key": principal.key.key_id,
        "X-Request-Id": ctx.request_id,
    }
    for name, value in scope["headers"]:
        if name in REQUEST_HEADERS:
            headers[name.decode()] = value.decode("latin-1")
    first = await ctx.receive()
    first_chunk = first.get("body", b"") if first["type"] == "http.request" else b""
    # A body that came in one message is sent as bytes; a longer one is streamed as it arrives.
    body: Any = _body(first_chunk, ctx.receive) if first.get("more_body", False) else first_chunk
    try:
        response = await state.upstream.send(ctx.method, url, headers, body)
    except UpstreamError as exc:
        raise GatewayError(
            502,
            f"The control plane could not be reached (request id {ctx.request_id}). Retry the request.",
            type="server_error",
            code="control_plane_unavailable",
        ) from exc
    try:
        ctx.status = response.status
        out = [(b"x-request-id", ctx.request_id.encode())]
        out.extend((name, value) for name, value in response.headers if name in RESPONSE_HEADERS)
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await response.close()
