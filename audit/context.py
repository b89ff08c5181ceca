"""The request being served, so services deep in a call can name who acted and from where.

Services (``tenants.keys``, ``billing.spend``…) take no request, and threading one through every
signature would change them all. ``AuditContextMiddleware`` keeps the current request in a
context variable (asgiref copies it into the thread a sync view runs in); ``audit.trail.record``
reads it when its caller passes no ``request``. Outside a request (Celery, management commands)
there is none, and the actor is the system unless the caller names one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_request: ContextVar[Any] = ContextVar("audit_request", default=None)


def current_request() -> Any:
    return _request.get()


@contextmanager
def using_request(request: Any) -> Iterator[None]:
    token = _request.set(request)
    try:
        yield
    finally:
        _request.reset(token)


class AuditContextMiddleware:
    """Makes the request visible to ``audit.trail.record`` for as long as the view runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with using_request(request):
            return self.get_response(request)
