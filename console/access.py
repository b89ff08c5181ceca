"""The guard of every tenant page in the console: a logged-in user, the current tenant, a permission.

``@tenant_required(perm=...)`` resolves the current tenant once (``tenants.middleware``: the one
chosen in this session among the user's memberships, else the oldest), checks the tenant object
permission through ``tenants.permissions.allows`` (the check the management API makes too) and
hands the tenant to the view as its second argument.

A logged-in user who belongs to no organization (staff, or someone removed from their only one)
is answered here, not in each view. What they get is declared with the view, because the security
matrix (tests/security/test_tenant_matrix.py) fixes it per URL: pages show the overview's "not a
member of any organization" page, the team page sends them to it, actions on a tenant's objects
answer 404 as for an object that does not exist, and team actions 403 as for a role without the
permission.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from tenants import permissions

NOT_A_MEMBER = "You are not a member of any organization."


class NoTenant(enum.Enum):
    """What a view answers a user who belongs to no organization."""

    PAGE = "page"  # the overview's "not a member of any organization" page (200)
    OVERVIEW = "overview"  # a redirect to the overview, which shows that page
    NOT_FOUND = "not_found"  # 404, like an object of another tenant
    FORBIDDEN = "forbidden"  # 403, like a role without the permission


def forbidden(request: HttpRequest, message: str, *, json: bool = False) -> HttpResponse:
    """The 403 answer: the console's "Not allowed" page, or ``{"error": message}``."""
    if json:
        return JsonResponse({"error": message}, status=403)
    return render(request, "console/forbidden.html", {"message": message}, status=403)


def _no_tenant(request: HttpRequest, answer: NoTenant, *, json: bool) -> HttpResponse:
    if answer is NoTenant.PAGE:
        return render(request, "console/overview.html", {})
    if answer is NoTenant.OVERVIEW:
        return redirect("console:overview")
    if answer is NoTenant.FORBIDDEN:
        return forbidden(request, NOT_A_MEMBER, json=json)
    if json:
        return JsonResponse({"error": NOT_A_MEMBER}, status=404)
    raise Http404(NOT_A_MEMBER)


def tenant_required(
    *,
    perm: str | None = None,
    denied: str = "Your role does not allow this. Ask an owner or admin.",
    if_no_tenant: NoTenant = NoTenant.PAGE,
    json: bool = False,
    methods: list[str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Call the view as ``view(request, tenant, ...)`` for members holding ``perm`` on the tenant.

    ``perm`` is a codename from ``tenants.constants`` (``PERM_USE_KEYS``…); without it any member
    passes. ``denied`` is the 403 message for the others (``{tenant}`` is the tenant). ``json``
    answers refusals as ``{"error": ...}`` for views that scripts call. ``methods`` restricts the
    HTTP methods (405 otherwise), checked after the login and before the tenant.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = request.membership  # type: ignore[attr-defined]
            tenant = membership.tenant if membership else None
            if tenant is None:
                return _no_tenant(request, if_no_tenant, json=json)
            if perm is not None and not permissions.allows(request.user, tenant, perm):
                return forbidden(request, denied.format(tenant=tenant), json=json)
            return view(request, tenant, *args, **kwargs)

        return login_required(require_http_methods(methods)(guarded) if methods else guarded)

    return decorate
