"""console/access.py: the current tenant and a permission, checked once for every tenant page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory

from console.access import NoTenant, tenant_required
from tenants.constants import PERM_MANAGE_MEMBERS, PERM_USE_KEYS, PERM_VIEW_BILLING, Role
from tenants.middleware import CurrentTenantMiddleware
from tenants.models import Membership
from tenants.permissions import allows
from tests.factories import TenantFactory, UserFactory, member

pytestmark = pytest.mark.django_db


def _request(user, method="get", session_tenant=None):
    request = getattr(RequestFactory(), method)("/somewhere/")
    SessionMiddleware(lambda r: HttpResponse()).process_request(request)
    if session_tenant is not None:
        request.session["berth_tenant_id"] = str(session_tenant.pk)
    request.user = user
    CurrentTenantMiddleware(lambda r: HttpResponse()).__call__(request)
    return request


def _echo(**options):
    @tenant_required(**options)
    def view(request, tenant, **kwargs):
        return HttpResponse(f"{tenant.pk}|{sorted(kwargs)}")

    return view


def test_the_view_gets_the_tenant_chosen_in_the_session_and_the_url_arguments():
    first, second = TenantFactory(), TenantFactory()
    user = member(first, Role.MEMBER)
    Membership.objects.create(tenant=second, user=user, role=Role.MEMBER)
    response = _echo()(_request(user, session_tenant=second), thing="x")
    assert response.content.decode() == f"{second.pk}|['thing']"
    response = _echo()(_request(user))  # no choice yet: the oldest membership
    assert response.content.decode().startswith(str(first.pk))


def test_a_role_without_the_permission_is_refused_with_the_message_naming_the_tenant():
    tenant = TenantFactory(name="Harbour Ltd")
    view = _echo(perm=PERM_VIEW_BILLING, denied="No billing in {tenant.name}.")
    refused = view(_request(member(tenant, Role.MEMBER)))
    assert refused.status_code == 403 and "No billing in Harbour Ltd." in refused.content.decode()
    assert view(_request(member(tenant, Role.BILLING))).status_code == 200

    as_json = _echo(perm=PERM_VIEW_BILLING, denied="Nope.", json=True)(_request(member(tenant, Role.MEMBER)))
    assert as_json.status_code == 403 and as_json["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("answer", "status"),
    [(NoTenant.PAGE, 200), (NoTenant.OVERVIEW, 302), (NoTenant.FORBIDDEN, 403)],
)
def test_a_user_in_no_organization_gets_the_declared_answer(answer, status):
    response = _echo(perm=PERM_USE_KEYS, if_no_tenant=answer)(_request(UserFactory()))
    assert response.status_code == status
    if answer is NoTenant.PAGE:
        assert "not a member of any organization" in response.content.decode()


def test_not_found_is_a_404_page_or_json():
    from django.http import Http404

    with pytest.raises(Http404):
        _echo(if_no_tenant=NoTenant.NOT_FOUND)(_request(UserFactory()))
    as_json = _echo(if_no_tenant=NoTenant.NOT_FOUND, json=True)(_request(UserFactory()))
    assert as_json.status_code == 404 and "organization" in json.loads(as_json.content)["error"]


def test_anonymous_visitors_log_in_first_and_the_method_is_checked_before_the_tenant():
    view = _echo(perm=PERM_MANAGE_MEMBERS, if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"])
    anonymous = view(_request(AnonymousUser()))
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert view(_request(UserFactory())).status_code == 405  # GET: before "no tenant" (404)
    tenant = TenantFactory()
    assert view(_request(member(tenant, Role.MEMBER), method="post")).status_code == 403
    assert view(_request(member(tenant, Role.ADMIN), method="post")).status_code == 200


def test_allows_refuses_without_a_tenant_or_a_login():
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER)
    assert allows(owner, tenant, PERM_MANAGE_MEMBERS)
    assert not allows(owner, None, PERM_MANAGE_MEMBERS)
    assert not allows(AnonymousUser(), tenant, PERM_USE_KEYS)
    assert not allows(None, tenant, PERM_USE_KEYS)
    assert not allows(member(TenantFactory(), Role.OWNER), tenant, PERM_USE_KEYS)  # another tenant's owner


def test_permission_names_are_built_in_one_place():
    """Views, the API, the context processor and role grants name a codename and let
    ``tenants.permissions`` add the app label; no ``f"tenants.{…}"`` of their own."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for folder in ("console", "tenants", "billing", "models_registry", "staff", "berth")
        for path in (root / folder).rglob("*.py")
        if path != root / "tenants" / "permissions.py" and re.search(r"f[\"']tenants\.\{", path.read_text())
    ]
    assert offenders == []
