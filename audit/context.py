"""The request being served, so services deep in a call can name who acted and from where.

Services (``tenants.keys``, ``billing.spend``…) take no request, and threading one through every
signature would change them all. ``AuditContextMiddleware`` keeps the current request in a
context variable (asgiref copies it into the thread a sync view runs in); ``audit.trail.record``
reads it when its caller passes no ``request``. Outside a request (Celery, management commands)
there is none, and the actor is the system unless the caller names one. ``acting_as`` sets a
label for such work (a command's ``--actor``) the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_request: ContextVar[Any] = ContextVar("audit_request", default=None)
_system_label: ContextVar[str] = ContextVar("audit_system_label", default="system")


def current_request() -> Any:
    return _request.get()


def system_label() -> str:
    return _system_label.get()


@contextmanager
def using_request(request: Any) -> Iterator[None]:
    token = _request.set(request)
    try:
        yield
    finally:
        _request.reset(token)


@contextmanager
def acting_as(label: str) -> Iterator[None]:
    """Label system entries recorded inside (``"celery:billing.tasks.close_periods"``…)."""
    token = _system_label.set(label)
    try:
        yield
    finally:
        _system_label.reset(token)


class AuditContextMiddleware:
    """Makes the request visible to ``audit.trail.record`` for as long as the view runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with using_request(request):
            return self.get_response(request)
