"""Console pages for tenant users: signup, overview and API keys."""

from __future__ import annotations

import secrets
import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from console.forms import ApiKeyForm, SignupForm
from tenants import accounts, keys
from tenants.constants import PERM_MANAGE_KEYS, PERM_USE_KEYS
from tenants.middleware import SESSION_KEY
from tenants.models import ApiKey, Membership

USED_NONCES_KEY = "berth_key_form_nonces"


def signup(request):
    if request.user.is_authenticated:
        return redirect("console:overview")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user, tenant = accounts.signup(
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password"],
            organization=form.cleaned_data["organization"],
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        request.session[SESSION_KEY] = str(tenant.pk)
        messages.success(request, f"Welcome to Berth! {tenant.name} is ready. Create an API key to start.")
        return redirect("console:keys")
    return render(request, "registration/signup.html", {"form": form})


def _tenant_or_404(request):
    tenant = request.tenant
    if not tenant:
        raise Http404("You are not a member of any organization.")
    return tenant


@login_required
@require_POST
def switch_tenant(request):
    try:
        tenant_id = uuid.UUID(request.POST.get("tenant", ""))
    except ValueError:
        raise Http404("No such organization.") from None
    membership = Membership.objects.filter(user=request.user, tenant_id=tenant_id).first()
    if membership is None:
        raise Http404("No such organization.")
    request.session[SESSION_KEY] = str(membership.tenant_id)
    return redirect("console:overview")


@login_required
def api_keys(request):
    tenant = _tenant_or_404(request)
    if not request.user.has_perm(f"tenants.{PERM_USE_KEYS}", tenant):
        return HttpResponseForbidden("Your role cannot use API keys. Ask an owner or admin.")
    form = ApiKeyForm(request.POST or None)
    created = None
    # Each rendered form carries a one-time nonce: a reload or double-click re-POSTs the same
    # nonce and must not create a second key (the secret itself is never kept to re-show it).
    used = request.session.get(USED_NONCES_KEY, [])
    nonce = request.POST.get("nonce", "")
    if request.method == "POST" and nonce in used:
        messages.info(request, "That key was already created; its secret was shown once and is not stored.")
        return redirect("console:keys")
    if request.method == "POST" and form.is_valid():
        request.session[USED_NONCES_KEY] = [*used[-19:], nonce]
        result = keys.create_api_key(
            tenant=tenant,
            name=form.cleaned_data["name"],
            created_by=request.user,
            allowed_models=form.cleaned_data["allowed_models"],
            expires_at=form.cleaned_data["expires_at"],
        )
        created = result
        form = ApiKeyForm()
    context = {
        "form": form,
        "nonce": secrets.token_urlsafe(16),
        "created": created,
        "keys": ApiKey.objects.for_tenant(tenant).select_related("created_by"),
        "can_manage_all": request.user.has_perm(f"tenants.{PERM_MANAGE_KEYS}", tenant),
    }
    # The page that shows a secret must not be cached by the browser or a proxy.
    response = render(request, "console/keys.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def revoke_api_key(request, key_id):
    tenant = _tenant_or_404(request)
    api_key = get_object_or_404(ApiKey.objects.for_tenant(tenant), pk=key_id)
    own = api_key.created_by_id == request.user.pk
    if not (own and request.user.has_perm(f"tenants.{PERM_USE_KEYS}", tenant)) and not request.user.has_perm(
        f"tenants.{PERM_MANAGE_KEYS}", tenant
    ):
        return HttpResponseForbidden("Only admins can revoke keys created by someone else.")
    keys.revoke_api_key(api_key=api_key)
    messages.success(request, f"Revoked “{api_key.name}” ({api_key.display_prefix}…).")
    return redirect("console:keys")
