"""A Starlette app answering ``/healthz`` like the gateway does: ``bench/gateway.py --servers``
compares it with the gateway's raw ASGI callable to measure what a framework layer costs."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def healthz(request):
    return JSONResponse({"status": "ok"}, headers={"x-request-id": "x"})


app = Starlette(routes=[Route("/healthz", healthz)])
