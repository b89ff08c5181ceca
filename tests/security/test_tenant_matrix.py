"""Every URL pattern of the web app, called by every role, with other tenants' objects in the URL.

The patterns come from the URLconf itself: a pattern without an entry in ``PROBES`` (or, under
``/admin/``, of a kind ``ADMIN_KINDS`` does not know) fails ``test_every_url_pattern_has_probes``,
so a new view cannot ship without saying who may call it. Expected statuses follow the README's
role table: another tenant's object is a 404 (its existence is not revealed), a role without the
permission gets a 403, anonymous visitors are sent to log in (401 on the API), staff pages are for
``is_staff`` only. Every answer to a non-staff caller is also searched for the other tenants'
markers (names, emails, key ids, request ids), so a list that leaks a row fails too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from tests.security.world import World

pytestmark = pytest.mark.django_db

ROLES = ("owner", "admin", "member", "billing", "outsider", "anonymous", "staff")
LOGIN = "login"  # 302 to the console's login page
ADMIN_LOGIN = "admin-login"  # 302 to the admin's login page
INTERNAL_TOKEN = "matrix-internal-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_matrix_0123456789"


def by_role(owner, admin, member, billing, outsider, anonymous, staff) -> dict[str, Any]:
    return dict(zip(ROLES, (owner, admin, member, billing, outsider, anonymous, staff), strict=True))


def everyone(status) -> dict[str, Any]:
    return dict.fromkeys(ROLES, status)


@dataclass(frozen=True)
class Probe:
    route: str  # the URLconf route the path must resolve to
    method: str
    path: str  # ``{name}`` placeholders come from ``World.values()``
    expect: dict[str, Any]
    data: dict | None = None
    headers: dict = field(default_factory=dict)
    api: bool = False  # JSON body and Accept
    leak_check: bool = True
    note: str = ""  # tells apart probes of one path

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}" + (f" ({self.note})" if self.note else "")


def console(route, method, path, expect, **kw) -> Probe:
    return Probe(route, method, path, expect, **kw)


def api(route, method, path, expect, **kw) -> Probe:
    return Probe(route, method, path, expect, api=True, **kw)


HTMX = {"HTTP_HX_REQUEST": "true"}
GUARDRAIL_FORM = {"policy-name": "matrix", "policy-applies_to_prompts": "on", "policy-detector_email": "redact", "policy-blocked_terms_action": "block", "policy-max_prompt_action": "block", "policy-screen_threshold": "0.8", "policy-screen_action": "block", "policy-screen_timeout_ms": "500"}  # fmt: skip
WEBHOOK_FORM = {"url": "https://93.184.216.34/hook", "events": ["invoice.paid"], "enabled": "on"}
NOT_FOUND_FOR_TENANTS = by_role(404, 404, 404, 404, 404, LOGIN, 404)
STAFF_ONLY = by_role(403, 403, 403, 403, 403, LOGIN, 200)
STAFF_ACTION = by_role(403, 403, 403, 403, 403, LOGIN, 302)

PROBES: list[Probe] = [
    # ---------------------------------------------------------------- health and private surfaces
    console("healthz", "GET", "/healthz", everyone(200)),
    # The token is set in these tests: no role's session opens them, only the bearer token
    # (test_internal_endpoints_open_with_the_token).
    console("internal/prometheus/engines", "GET", "/internal/prometheus/engines", everyone(401)),
    console("internal/metrics", "GET", "/internal/metrics", everyone(401)),
    # The Files and Batch APIs behind the gateway: the token and a tenant header, never a session.
    console("internal/v1/files", "GET", "/internal/v1/files", everyone(401)),
    console("internal/v1/files/<str:file_id>", "GET", "/internal/v1/files/file-nope", everyone(401)),
    console("internal/v1/files/<str:file_id>/content", "GET", "/internal/v1/files/file-nope/content", everyone(401)),
    console("internal/v1/batches", "POST", "/internal/v1/batches", everyone(401)),
    console("internal/v1/batches/<str:batch_id>", "GET", "/internal/v1/batches/batch_nope", everyone(401)),
    console("internal/v1/batches/<str:batch_id>/cancel", "POST", "/internal/v1/batches/batch_nope/cancel", everyone(401)),
    console("internal/v1/<path:rest>", "GET", "/internal/v1/other", everyone(401)),
    # ---------------------------------------------------------------- console pages
    console("", "GET", "/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("models/", "GET", "/models/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("playground/", "GET", "/playground/", by_role(200, 200, 200, 403, 200, LOGIN, 200)),
    console("playground/key/", "POST", "/playground/key/", by_role(200, 200, 200, 403, 200, LOGIN, 404)),
    console("usage/", "GET", "/usage/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("usage/", "GET", "/usage/?start=2026-10-01&end=2026-10-31", by_role(200, 200, 200, 200, 200, LOGIN, 200), headers=HTMX, note="htmx"),
    console("usage.csv", "GET", "/usage.csv?start=2026-10-01&end=2026-10-31", by_role(200, 200, 200, 200, 200, LOGIN, 404)),
    console("usage.csv", "GET", "/usage.csv?start=2026-10-01&end=2026-10-31&granularity=day", by_role(200, 200, 200, 200, 200, LOGIN, 404)),
    console("settings/", "GET", "/settings/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("settings/", "POST", "/settings/", by_role(302, 302, 403, 403, 302, LOGIN, 200), data={"form": "organization", "org-name": "Renamed Org"}, note="organization"),
    console("settings/", "POST", "/settings/", by_role(302, 403, 403, 302, 302, LOGIN, 200), data={"form": "billing", "billing-spend_limit": "50", "billing-alert_thresholds": ["50", "80", "100"], "billing-billing_email": ""}, note="billing"),
    console("signup/", "GET", "/signup/", by_role(302, 302, 302, 302, 302, 200, 302)),
    console("switch/", "POST", "/switch/", by_role(302, 302, 302, 302, 404, LOGIN, 404), data={"tenant": "{home_tenant}"}, note="own tenant"),
    console("switch/", "POST", "/switch/", NOT_FOUND_FOR_TENANTS, data={"tenant": "{foreign_tenant}"}, note="foreign tenant"),
    console("adapters/", "GET", "/adapters/", by_role(200, 200, 200, 200, 200, LOGIN, 302)),
    console("adapters/", "POST", "/adapters/", by_role(200, 200, 403, 403, 200, LOGIN, 302), data={"name": "matrix"}),
    console("adapters/<uuid:adapter_id>/delete/", "POST", "/adapters/{new_home_adapter}/delete/", by_role(302, 302, 403, 403, 404, LOGIN, 404)),
    console("adapters/<uuid:adapter_id>/delete/", "POST", "/adapters/{foreign_adapter_id}/delete/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("batches/", "GET", "/batches/", by_role(200, 200, 200, 200, 200, LOGIN, 302)),
    console("batches/", "POST", "/batches/", by_role(400, 400, 400, 403, 400, LOGIN, 302), data={"endpoint": "/v1/embeddings"}),
    console("batches/rows/", "GET", "/batches/rows/", by_role(200, 200, 200, 200, 200, LOGIN, 404), headers=HTMX, note="htmx"),
    console("batches/<str:batch_id>/cancel/", "POST", "/batches/batch_nope/cancel/", by_role(404, 404, 404, 403, 404, LOGIN, 404)),
    console("batches/files/<str:file_id>/", "GET", "/batches/files/file-nope/", by_role(404, 404, 404, 404, 404, LOGIN, 404)),
    console("keys/", "GET", "/keys/", by_role(200, 200, 200, 403, 200, LOGIN, 404)),
    console("keys/", "POST", "/keys/", by_role(200, 200, 200, 403, 200, LOGIN, 404), data={"name": "matrix", "nonce": "n-1"}),
    console("keys/<uuid:key_id>/revoke/", "POST", "/keys/{new_home_key}/revoke/", by_role(302, 302, 403, 403, 404, LOGIN, 404)),
    console("keys/<uuid:key_id>/revoke/", "POST", "/keys/{foreign_key}/revoke/", NOT_FOUND_FOR_TENANTS),
    console("team/", "GET", "/team/", by_role(200, 200, 200, 200, 200, LOGIN, 302)),
    console("team/", "POST", "/team/", by_role(302, 302, 403, 403, 302, LOGIN, 302), data={"email": "new-person@x.test", "role": "member"}),
    console("team/members/<uuid:membership_id>/role/", "POST", "/team/members/{new_home_member}/role/", by_role(302, 302, 403, 403, 404, LOGIN, 403), data={"role": "billing"}),
    console("team/members/<uuid:membership_id>/role/", "POST", "/team/members/{foreign_member}/role/", by_role(404, 404, 403, 403, 404, LOGIN, 403), data={"role": "billing"}),
    console("team/members/<uuid:membership_id>/remove/", "POST", "/team/members/{new_home_member}/remove/", by_role(302, 302, 403, 403, 404, LOGIN, 403)),
    console("team/members/<uuid:membership_id>/remove/", "POST", "/team/members/{foreign_member}/remove/", by_role(404, 404, 403, 403, 404, LOGIN, 403)),
    console("team/invitations/<uuid:invitation_id>/revoke/", "POST", "/team/invitations/{new_home_invitation}/revoke/", by_role(302, 302, 403, 403, 404, LOGIN, 403)),
    console("team/invitations/<uuid:invitation_id>/revoke/", "POST", "/team/invitations/{foreign_invitation}/revoke/", by_role(404, 404, 403, 403, 404, LOGIN, 403)),
    # The token in the link is the capability: whoever holds it sees whom it invites to which tenant.
    console("invite/<str:token>/", "GET", "/invite/{foreign_invitation_token}/", everyone(200), leak_check=False),
    console("invite/<str:token>/", "GET", "/invite/not-a-real-token/", everyone(404)),
    console("audit/", "GET", "/audit/", by_role(200, 200, 403, 403, 200, LOGIN, 200)),
    console("audit/", "GET", "/audit/?action=api_key&start=2026-01-01&end=2030-12-31", by_role(200, 200, 403, 403, 200, LOGIN, 200), note="filtered"),
    console("audit.csv", "GET", "/audit.csv", by_role(200, 200, 403, 403, 200, LOGIN, 404)),
    console("guardrails/", "GET", "/guardrails/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("guardrails/", "POST", "/guardrails/", by_role(302, 302, 403, 403, 302, LOGIN, 200), data={"form": "policy", **GUARDRAIL_FORM}),
    console("guardrails/", "POST", "/guardrails/", by_role(302, 302, 403, 403, 302, LOGIN, 200), data={"form": "content", "content-content_retention_days": "9"}, note="content"),
    console("guardrails/<uuid:policy_id>/", "GET", "/guardrails/{home_guardrail}/", by_role(200, 200, 200, 200, 404, LOGIN, 404)),
    console("guardrails/<uuid:policy_id>/", "GET", "/guardrails/{foreign_guardrail}/", NOT_FOUND_FOR_TENANTS),
    console("guardrails/<uuid:policy_id>/", "POST", "/guardrails/{new_home_guardrail}/", by_role(302, 302, 403, 403, 404, LOGIN, 404), data=GUARDRAIL_FORM),
    console("guardrails/<uuid:policy_id>/", "POST", "/guardrails/{foreign_guardrail}/", NOT_FOUND_FOR_TENANTS, data=GUARDRAIL_FORM),
    console("guardrails/<uuid:policy_id>/delete/", "POST", "/guardrails/{new_home_guardrail}/delete/", by_role(302, 302, 403, 403, 404, LOGIN, 404)),
    console("guardrails/<uuid:policy_id>/delete/", "POST", "/guardrails/{foreign_guardrail}/delete/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("webhooks/", "GET", "/webhooks/", by_role(200, 200, 403, 403, 200, LOGIN, 200)),
    console("webhooks/", "POST", "/webhooks/", by_role(200, 200, 403, 403, 200, LOGIN, 200), data=WEBHOOK_FORM),
    console("webhooks/<uuid:endpoint_id>/", "GET", "/webhooks/{home_webhook}/", by_role(200, 200, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/", "GET", "/webhooks/{foreign_webhook}/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/", "POST", "/webhooks/{new_home_webhook}/", by_role(302, 302, 403, 403, 404, LOGIN, 404), data=WEBHOOK_FORM),
    console("webhooks/<uuid:endpoint_id>/", "POST", "/webhooks/{foreign_webhook}/", by_role(404, 404, 403, 403, 404, LOGIN, 404), data=WEBHOOK_FORM),
    console("webhooks/<uuid:endpoint_id>/test/", "POST", "/webhooks/{new_home_webhook}/test/", by_role(302, 302, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/test/", "POST", "/webhooks/{foreign_webhook}/test/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/rotate/", "POST", "/webhooks/{new_home_webhook}/rotate/", by_role(200, 200, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/rotate/", "POST", "/webhooks/{foreign_webhook}/rotate/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/delete/", "POST", "/webhooks/{new_home_webhook}/delete/", by_role(302, 302, 403, 403, 404, LOGIN, 404)),
    console("webhooks/<uuid:endpoint_id>/delete/", "POST", "/webhooks/{foreign_webhook}/delete/", by_role(404, 404, 403, 403, 404, LOGIN, 404)),
    console("billing/", "GET", "/billing/", by_role(200, 200, 403, 200, 200, LOGIN, 404)),
    console("billing/invoices/<uuid:invoice_id>/", "GET", "/billing/invoices/{home_invoice}/", by_role(200, 200, 403, 200, 404, LOGIN, 404)),
    console("billing/invoices/<uuid:invoice_id>/", "GET", "/billing/invoices/{foreign_invoice}/", by_role(404, 404, 403, 404, 404, LOGIN, 404)),
    console("billing/invoices/<uuid:invoice_id>/pdf/", "GET", "/billing/invoices/{home_invoice}/pdf/", by_role(200, 200, 403, 200, 404, LOGIN, 404)),
    console("billing/invoices/<uuid:invoice_id>/pdf/", "GET", "/billing/invoices/{foreign_invoice}/pdf/", by_role(404, 404, 403, 404, 404, LOGIN, 404)),
    # ---------------------------------------------------------------- accounts (django.contrib.auth)
    console("accounts/login/", "GET", "/accounts/login/", everyone(200)),
    console("accounts/logout/", "POST", "/accounts/logout/", everyone(LOGIN)),
    console("accounts/password_change/", "GET", "/accounts/password_change/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("accounts/password_change/done/", "GET", "/accounts/password_change/done/", by_role(200, 200, 200, 200, 200, LOGIN, 200)),
    console("accounts/password_reset/", "GET", "/accounts/password_reset/", everyone(200)),
    console("accounts/password_reset/done/", "GET", "/accounts/password_reset/done/", everyone(200)),
    console("accounts/reset/<uidb64>/<token>/", "GET", "/accounts/reset/MQ/not-a-token/", everyone(200)),
    console("accounts/reset/done/", "GET", "/accounts/reset/done/", everyone(200)),
    console("accounts/verify/<str:token>/", "GET", "/accounts/verify/not-a-token/", by_role(400, 400, 400, 400, 400, LOGIN, 400)),
    console("accounts/verify/resend/", "POST", "/accounts/verify/resend/", by_role(302, 302, 302, 302, 302, LOGIN, 302)),
    console("accounts/keys/revoke/", "POST", "/accounts/keys/revoke/", by_role(302, 302, 302, 302, 302, LOGIN, 302)),
    # ---------------------------------------------------------------- Stripe webhook (signature, no session)
    console("billing/stripe/webhook/", "POST", "/billing/stripe/webhook/", everyone(400), data={"id": "evt_1"}),
    # ---------------------------------------------------------------- staff dashboard
    console("staff/", "GET", "/staff/", STAFF_ONLY),
    console("staff/fleet/pool/", "GET", "/staff/fleet/pool/", STAFF_ONLY, headers=HTMX, note="htmx"),
    console("staff/fleet/workers/", "GET", "/staff/fleet/workers/", STAFF_ONLY, headers=HTMX, note="htmx"),
    console("staff/fleet/deployments/", "GET", "/staff/fleet/deployments/", STAFF_ONLY, headers=HTMX, note="htmx"),
    console("staff/deployments/<uuid:deployment_id>/scale/", "POST", "/staff/deployments/{deployment}/scale/", STAFF_ACTION, data={"replicas": "1"}),
    console("staff/deployments/<uuid:deployment_id>/drain/", "POST", "/staff/deployments/{deployment}/drain/", STAFF_ACTION),
    console("staff/deployments/<uuid:deployment_id>/restart/", "POST", "/staff/deployments/{deployment}/restart/", STAFF_ACTION),
    console("staff/workers/<uuid:worker_id>/drain/", "POST", "/staff/workers/{worker}/drain/", STAFF_ACTION),
    console("staff/tenants/", "GET", "/staff/tenants/", STAFF_ONLY),
    # Without "confirmed" the action only asks for confirmation (200); nothing is suspended.
    console("staff/tenants/<uuid:tenant_id>/status/", "POST", "/staff/tenants/{foreign_tenant}/status/", STAFF_ONLY, data={"status": "suspended"}),
    console("staff/revenue/", "GET", "/staff/revenue/", STAFF_ONLY),
    console("staff/traffic/", "GET", "/staff/traffic/", STAFF_ONLY),
    console("staff/economics/", "GET", "/staff/economics/?month=2026-03", STAFF_ONLY),
    console("staff/traffic/data/", "GET", "/staff/traffic/data/", STAFF_ONLY, headers=HTMX, note="htmx"),
    console("staff/batches/", "GET", "/staff/batches/", STAFF_ONLY),
    console("staff/queues/", "GET", "/staff/queues/", STAFF_ONLY),
    console("staff/queues/data/", "GET", "/staff/queues/data/", STAFF_ONLY),
    # ---------------------------------------------------------------- management API
    api("api/schema/", "GET", "/api/schema/", everyone(200)),
    api("api/docs/", "GET", "/api/docs/", everyone(200)),
    api("api/v1/tenant", "GET", "/api/v1/tenant", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/tenant/", "GET", "/api/v1/tenant/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/tenant", "PATCH", "/api/v1/tenant", by_role(200, 200, 403, 403, 200, 401, 403), data={"name": "Renamed Org"}),
    api("api/v1/members/?$", "GET", "/api/v1/members/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/members/?$", "POST", "/api/v1/members/", by_role({201, 202}, {201, 202}, 403, 403, {201, 202}, 401, 403), data={"email": "{new_email}", "role": "member"}),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/members/{home_member}/", by_role(200, 200, 200, 200, 404, 401, 403)),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/members/{foreign_member}/", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/members/{new_home_member}/", by_role(200, 200, 403, 403, 404, 401, 403), data={"role": "billing"}),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/members/{foreign_member}/", by_role(404, 404, 403, 403, 404, 401, 403), data={"role": "billing"}),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/members/{new_home_member}/", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/members/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/members/{foreign_member}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/keys/?$", "GET", "/api/v1/keys/", by_role(200, 200, 200, 403, 200, 401, 403)),
    api("api/v1/keys/?$", "POST", "/api/v1/keys/", by_role(201, 201, 201, 403, 201, 401, 403), data={"name": "matrix"}),
    api("api/v1/keys/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/keys/{home_key}/", by_role(200, 200, 200, 403, 404, 401, 403)),
    api("api/v1/keys/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/keys/{foreign_key}/", by_role(404, 404, 404, 403, 404, 401, 403)),
    api("api/v1/keys/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/keys/{new_home_key}/", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/keys/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/keys/{foreign_key}/", by_role(404, 404, 404, 403, 404, 401, 403)),
    api("api/v1/keys/(?P<pk>[^/.]+)/revoke/?$", "POST", "/api/v1/keys/{new_home_key}/revoke/", by_role(200, 200, 403, 403, 404, 401, 403)),
    api("api/v1/keys/(?P<pk>[^/.]+)/revoke/?$", "POST", "/api/v1/keys/{foreign_key}/revoke/", by_role(404, 404, 404, 403, 404, 401, 403)),
    api("api/v1/invitations/?$", "GET", "/api/v1/invitations/", by_role(200, 200, 403, 403, 200, 401, 403)),
    api("api/v1/invitations/?$", "POST", "/api/v1/invitations/", by_role(201, 201, 403, 403, 201, 401, 403), data={"email": "someone-new@x.test", "role": "member"}),
    api("api/v1/invitations/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/invitations/{home_invitation}/", by_role(200, 200, 403, 403, 404, 401, 403)),
    api("api/v1/invitations/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/invitations/{foreign_invitation}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/invitations/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/invitations/{new_home_invitation}/", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/invitations/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/invitations/{foreign_invitation}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/models/?$", "GET", "/api/v1/models", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/models/(?P<name>[^/]+?)/?$", "GET", "/api/v1/models/{home_model}", by_role(200, 200, 200, 200, 404, 401, 403)),
    api("api/v1/models/(?P<name>[^/]+?)/?$", "GET", "/api/v1/models/{foreign_model}", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/audit", "GET", "/api/v1/audit", by_role(200, 200, 403, 403, 200, 401, 403)),
    api("api/v1/audit/", "GET", "/api/v1/audit/?action=api_key", by_role(200, 200, 403, 403, 200, 401, 403)),
    api("api/v1/staff/economics", "GET", "/api/v1/staff/economics", by_role(403, 403, 403, 403, 403, 401, 200)),
    api("api/v1/staff/economics/", "GET", "/api/v1/staff/economics/?month=2026-03", by_role(403, 403, 403, 403, 403, 401, 200)),
    api("api/v1/adapters/?$", "GET", "/api/v1/adapters/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/adapters/?$", "POST", "/api/v1/adapters", by_role(400, 400, 403, 403, 400, 401, 403), data={"name": "matrix"}),
    api("api/v1/adapters/(?P<name>[^/]+?)/?$", "GET", "/api/v1/adapters/{home_adapter}", by_role(200, 200, 200, 200, 404, 401, 403)),
    api("api/v1/adapters/(?P<name>[^/]+?)/?$", "GET", "/api/v1/adapters/{foreign_adapter}", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/adapters/(?P<name>[^/]+?)/?$", "DELETE", "/api/v1/adapters/{new_home_adapter_name}", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/adapters/(?P<name>[^/]+?)/?$", "DELETE", "/api/v1/adapters/{foreign_adapter}", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/usage", "GET", "/api/v1/usage?start=2026-10-01&end=2026-10-31", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/usage/", "GET", "/api/v1/usage/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/usage/requests", "GET", "/api/v1/usage/requests?start=2026-10-01&end=2026-10-31", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/usage/requests/", "GET", "/api/v1/usage/requests/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/guardrails/?$", "GET", "/api/v1/guardrails/", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/guardrails/?$", "POST", "/api/v1/guardrails/", by_role(201, 201, 403, 403, 201, 401, 403), data={"name": "matrix", "detectors": {"email": "redact"}}),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/guardrails/{home_guardrail}/", by_role(200, 200, 200, 200, 404, 401, 403)),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/guardrails/{foreign_guardrail}/", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/guardrails/{new_home_guardrail}/", by_role(200, 200, 403, 403, 404, 401, 403), data={"name": "renamed"}),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/guardrails/{foreign_guardrail}/", by_role(404, 404, 403, 403, 404, 401, 403), data={"name": "renamed"}),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/guardrails/{new_home_guardrail}/", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/guardrails/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/guardrails/{foreign_guardrail}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/?$", "GET", "/api/v1/webhooks/", by_role(200, 200, 403, 403, 200, 401, 403)),
    api("api/v1/webhooks/?$", "POST", "/api/v1/webhooks/", by_role(201, 201, 403, 403, 201, 401, 403), data={"url": "https://93.184.216.34/m", "events": ["invoice.paid"]}),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/webhooks/{home_webhook}/", by_role(200, 200, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/webhooks/{foreign_webhook}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/webhooks/{new_home_webhook}/", by_role(200, 200, 403, 403, 404, 401, 403), data={"enabled": False}),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "PATCH", "/api/v1/webhooks/{foreign_webhook}/", by_role(404, 404, 403, 403, 404, 401, 403), data={"enabled": False}),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/webhooks/{new_home_webhook}/", by_role(204, 204, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/?$", "DELETE", "/api/v1/webhooks/{foreign_webhook}/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/deliveries/?$", "GET", "/api/v1/webhooks/{home_webhook}/deliveries/", by_role(200, 200, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/deliveries/?$", "GET", "/api/v1/webhooks/{foreign_webhook}/deliveries/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/rotate-secret/?$", "POST", "/api/v1/webhooks/{new_home_webhook}/rotate-secret/", by_role(200, 200, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/rotate-secret/?$", "POST", "/api/v1/webhooks/{foreign_webhook}/rotate-secret/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/test/?$", "POST", "/api/v1/webhooks/{new_home_webhook}/test/", by_role(202, 202, 403, 403, 404, 401, 403)),
    api("api/v1/webhooks/(?P<pk>[^/.]+)/test/?$", "POST", "/api/v1/webhooks/{foreign_webhook}/test/", by_role(404, 404, 403, 403, 404, 401, 403)),
    api("api/v1/usage", "GET", "/api/v1/usage?group_by=key&key={home_key}", by_role(200, 200, 200, 200, 400, 401, 403), note="per key"),
    api("api/v1/content-governance", "GET", "/api/v1/content-governance", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/content-governance/", "PATCH", "/api/v1/content-governance/", by_role(200, 200, 403, 403, 200, 401, 403), data={"content_retention_days": 9}),
    api("api/v1/invoices/?$", "GET", "/api/v1/invoices", by_role(200, 200, 403, 200, 200, 401, 403)),
    api("api/v1/invoices/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/invoices/{home_invoice}", by_role(200, 200, 403, 200, 404, 401, 403)),
    api("api/v1/invoices/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/invoices/{foreign_invoice}", by_role(404, 404, 403, 404, 404, 401, 403)),
    api("api/v1/invoices/(?P<pk>[^/.]+)/pdf/?$", "GET", "/api/v1/invoices/{home_invoice}/pdf", by_role(200, 200, 403, 200, 404, 401, 403)),
    api("api/v1/invoices/(?P<pk>[^/.]+)/pdf/?$", "GET", "/api/v1/invoices/{foreign_invoice}/pdf", by_role(404, 404, 403, 404, 404, 401, 403)),
    api("api/v1/batches/?$", "GET", "/api/v1/batches", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/batches/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/batches/batch_nope", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/batches/(?P<pk>[^/.]+)/cancel/?$", "POST", "/api/v1/batches/batch_nope/cancel", by_role(404, 404, 404, 403, 404, 401, 403)),
    api("api/v1/files/?$", "GET", "/api/v1/files", by_role(200, 200, 200, 200, 200, 401, 403)),
    api("api/v1/files/(?P<pk>[^/.]+)/?$", "GET", "/api/v1/files/file-nope", by_role(404, 404, 404, 404, 404, 401, 403)),
    api("api/v1/files/(?P<pk>[^/.]+)/content/?$", "GET", "/api/v1/files/file-nope/content", by_role(404, 404, 404, 404, 404, 401, 403)),
]  # fmt: skip


def _join(first: str, second: str) -> str:
    # As django.urls.resolvers.URLResolver._join_route builds ResolverMatch.route.
    return second if not first else first + second.removeprefix("^")


def url_routes(patterns=None, prefix: str = ""):
    """Every leaf route of the URLconf, as ``ResolverMatch.route`` spells it."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = _join(prefix, str(pattern.pattern))
        if isinstance(pattern, URLResolver):
            yield from url_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def fill(path: str, values: dict[str, Any]) -> str:
    out = path
    for name, value in values.items():
        token = "{" + name + "}"
        if token in out:
            out = out.replace(token, str(value() if callable(value) else value))
    return out


def fill_data(data: dict | None, values: dict[str, Any]) -> dict | None:
    return (
        None if data is None else {k: fill(v, values) if isinstance(v, str) else v for k, v in data.items()}
    )


def client_for(world: World, role: str) -> APIClient:
    client = APIClient()
    if role in world.sessions:
        client.cookies[settings.SESSION_COOKIE_NAME] = world.sessions[role]
    return client


def body_of(response) -> str:
    if not response.streaming:
        content = response.content
    elif response.is_async:  # a download streamed from an async generator (the usage CSV)

        async def collect():
            return b"".join([part async for part in response.streaming_content])

        content = async_to_sync(collect)()
    else:
        content = b"".join(response.streaming_content)
    return content.decode("utf-8", errors="replace")


def call(world: World, probe: Probe, role: str):
    values = world.values()
    client = client_for(world, role)
    path = fill(probe.path, values)
    data = fill_data(probe.data, values)
    kwargs = {"format": "json"} if probe.api else {}
    return getattr(client, probe.method.lower())(path, data, **kwargs, **probe.headers)


def outcome(response, expected) -> str | None:
    """None when ``response`` is what ``expected`` says, else what it was."""
    status, location = response.status_code, response.get("Location", "")
    to_login = status == 302 and "/login/" in location
    if expected == LOGIN:
        ok = to_login and location.startswith("/accounts/login/")
    elif expected == ADMIN_LOGIN:
        ok = to_login and location.startswith("/admin/login/")
    elif isinstance(expected, set):
        ok = status in expected
    else:
        ok = status == expected and not to_login
    return None if ok else f"{status}{' → ' + location if location else ''}"


def run_probe(world: World, probe: Probe, roles=ROLES) -> list[str]:
    problems = []
    for role in roles:
        expected = probe.expect[role]
        response = call(world, probe, role)
        got = outcome(response, expected)
        if got is not None:
            problems.append(f"{role}: expected {expected}, got {got}")
            continue
        if probe.leak_check:
            body = body_of(response)
            leaked = [marker for marker in world.markers_hidden_from(role) if marker in body]
            if leaked:
                problems.append(f"{role}: {response.status_code} shows another tenant's {leaked}")
    return problems


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker):
    """One world for the module, inside a transaction rolled back at its end.

    Each test still runs in its own savepoint (pytest-django's ``db``), so what a probe changes
    or deletes is undone before the next test; building the world once keeps the suite fast.
    """
    with django_db_blocker.unblock(), transaction.atomic():
        built = World()
        built.sessions = {}
        for role, user in built.users.items():
            if user is not None:
                client = Client()
                client.force_login(user)
                built.sessions[role] = client.cookies[settings.SESSION_COOKIE_NAME].value
        yield built
        transaction.set_rollback(True)


@pytest.fixture
def world(shared_world, db):
    with override_settings(INTERNAL_TOKEN=INTERNAL_TOKEN, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET):
        yield shared_world


@pytest.mark.slow  # every URL as every actor: about a minute; CI and `make test` run it
@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_matrix(world, probe):
    assert resolve(fill(probe.path, world.values()).split("?")[0]).route == probe.route
    problems = run_probe(world, probe, ROLES)
    assert not problems, f"{probe.id}:\n  " + "\n  ".join(problems)


def test_every_url_pattern_has_probes():
    probed = {probe.route for probe in PROBES}
    missing = [route for route in url_routes() if not route.startswith("admin/") and route not in probed]
    unknown_admin = [
        route for route in url_routes() if route.startswith("admin/") and admin_kind(route) is None
    ]
    assert not missing, f"URL patterns without matrix probes: {missing}"
    assert not unknown_admin, f"admin URL patterns of a kind the matrix does not know: {unknown_admin}"
    stale = probed - set(url_routes())
    assert not stale, f"probes for routes that no longer exist: {stale}"


def test_internal_endpoints_open_with_the_token(world):
    client = APIClient()
    for path in ("/internal/prometheus/engines", "/internal/metrics"):
        assert client.get(path, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}").status_code == 200


def test_a_management_key_sees_only_its_own_tenant(world):
    """The same isolation through ``Authorization: Bearer mk-berth-…`` instead of a session."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.home.management_key}")
    values = world.values()
    for path in ("/api/v1/keys/{foreign_key}/", "/api/v1/members/{foreign_member}/",
                 "/api/v1/invitations/{foreign_invitation}/", "/api/v1/invoices/{foreign_invoice}",
                 "/api/v1/models/{foreign_model}"):  # fmt: skip
        assert client.get(fill(path, values)).status_code == 404, path
    for path in ("/api/v1/keys/", "/api/v1/members/", "/api/v1/invitations/", "/api/v1/invoices",
                 "/api/v1/models", "/api/v1/usage", "/api/v1/usage/requests", "/api/v1/tenant",
                 "/api/v1/audit"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 200, path
        assert not [m for m in world.foreign.markers if m in response.content.decode()], path
    assert world.home.key.name in client.get("/api/v1/keys/").content.decode()


# ---------------------------------------------------------------------------- the admin

ADMIN_KINDS = {
    # each registered model's pages: kind → path under the model's base
    "changelist": "{base}",
    "add": "{base}add/",
    "history": "{base}{pk}/history/",
    "delete": "{base}{pk}/delete/",
    "change": "{base}{pk}/change/",
    "redirect": "{base}{pk}/",
}


def admin_kind(route: str) -> str | None:
    """Which kind of admin page ``route`` is, or None for one this suite does not know."""
    fixed = {
        "admin/": "index",
        "admin/login/": "login",
        "admin/logout/": "logout",
        "admin/password_change/": "site",
        "admin/password_change/done/": "site",
        "admin/autocomplete/": "site",
        "admin/jsi18n/": "site",
        "admin/r/<path:content_type_id>/<path:object_id>/": "view_on_site",
        "admin/(?P<url>.*)$": "catch_all",
    }
    if route in fixed:
        return fixed[route]
    if route.startswith("admin/(?P<app_label>"):
        return "app_list"
    for model, _ in admin.site._registry.items():
        base = f"admin/{model._meta.app_label}/{model._meta.model_name}/"
        if not route.startswith(base):
            continue
        rest = route.removeprefix(base)
        kinds = {
            "": "changelist",
            "add/": "add",
            "<path:object_id>/history/": "history",
            "<path:object_id>/delete/": "delete",
            "<path:object_id>/change/": "change",
            "<path:object_id>/": "redirect",
        }
        if rest in kinds:
            return kinds[rest]
        # Extra pages a ModelAdmin adds (user password, guardian's object permissions).
        if rest.startswith(("<id>/password/", "<object_pk>/permissions/")):
            return "object_extra"
    return None


def admin_paths(world: World) -> list[tuple[str, str]]:
    """(kind, path) for every registered model's pages plus the site's own."""
    tenant_type = ContentType.objects.get_for_model(world.home.tenant)
    paths = [("index", "/admin/"), ("app_list", "/admin/tenants/"), ("site", "/admin/password_change/"),
             ("site", "/admin/password_change/done/"), ("site", "/admin/jsi18n/"),
             ("catch_all", "/admin/no-such-page/"), ("login", "/admin/login/"), ("logout", "/admin/logout/"),
             ("site", "/admin/autocomplete/"),
             ("view_on_site", f"/admin/r/{tenant_type.pk}/{world.home.tenant.pk}/")]  # fmt: skip
    for model in admin.site._registry:
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        instance = model._default_manager.first()
        pk = instance.pk if instance is not None else "00000000-0000-0000-0000-000000000000"
        for kind, template in ADMIN_KINDS.items():
            paths.append((kind, template.format(base=base, pk=pk)))
    paths.append(("object_extra", f"/admin/tenants/user/{world.home.owner.pk}/password/"))
    paths.append(("object_extra", f"/admin/tenants/tenant/{world.foreign.tenant.pk}/permissions/"))
    return paths


SITE_KINDS = ("index", "login", "logout", "site", "app_list", "catch_all", "view_on_site")


@pytest.mark.slow  # every admin page as every actor
def test_the_admin_is_for_staff_only(world):
    """The admin checks ``is_staff`` only, whatever the tenant role: its site pages are called by
    every role, each model's pages by the most privileged non-staff user, anonymous and staff."""
    problems = []
    for kind, path in admin_paths(world):
        for role in ROLES if kind in SITE_KINDS else ("owner", "anonymous", "staff"):
            response = client_for(world, role).get(path)
            status, location = response.status_code, response.get("Location", "")
            if role == "staff":
                # Staff may meet a 403 (an append-only model's add page) or a redirect, never a login.
                ok = status < 500 and "/login/" not in location
            elif kind == "login":
                ok = status == 200
            elif kind == "logout":
                ok = status in (302, 405) and "/login/" not in location
            else:
                ok = outcome(response, ADMIN_LOGIN) is None
            if not ok:
                problems.append(f"{role} GET {path}: {status} {location}")
    assert not problems, "\n".join(problems)


def test_the_admin_kinds_cover_the_site():
    kinds = {admin_kind(route) for route in url_routes() if route.startswith("admin/")}
    assert {"index", "login", "changelist", "change", "catch_all"} <= kinds
