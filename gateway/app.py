"""The gateway's ASGI application.

Until the gateway issue lands this answers only ``GET /healthz`` (so ``manage.py up`` can start
and supervise it); everything else is an OpenAI-shaped 404. It deliberately does not import
Django: the gateway's hot path never touches the ORM.
"""

from __future__ import annotations

import json


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz" and scope["method"] == "GET":
        await _send_json(send, 200, {"status": "ok"})
        return
    await _send_json(
        send,
        404,
        {
            "error": {
                "message": f"Unknown request URL: {scope['method']} {scope['path']}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
    )
