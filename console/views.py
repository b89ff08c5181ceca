"""Console pages for tenant users: sign-up and the account flows around it, and API keys.

Sign-up, login and password reset are throttled per IP and per address (tenants/throttling.py)
and answer the same way whether or not an address has an account.
"""

from __future__ import annotations

import secrets
import uuid

from django.contrib import admin, messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from console.access import NoTenant, forbidden, tenant_required
from console.forms import ApiKeyForm, SignupForm
from tenants import accounts, keys, throttling, verification
from tenants.constants import PERM_MANAGE_KEYS, PERM_USE_KEYS
from tenants.middleware import SESSION_KEY
from tenants.models import ApiKey, Membership
from tenants.permissions import allows

USED_NONCES_KEY = "berth_key_form_nonces"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def signup(request):
    if request.user.is_authenticated:
        return redirect("console:overview")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        wait = throttling.check(request, flow="signup", account=form.cleaned_data["email"])
        if wait:
            form.add_error(None, throttling.message(wait))
            return render(request, "registration/signup.html", {"form": form}, status=429)
        # The same page whether the address is new or already has an account (its owner is
        # mailed instead), so the form cannot be used to find out who has one.
        accounts.signup(
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password"],
            organization=form.cleaned_data["organization"],
            base_url=request.build_absolute_uri("/"),
        )
        return render(request, "registration/signup_done.html", {"email": form.cleaned_data["email"]})
    return render(request, "registration/signup.html", {"form": form})


@login_required
def verify_email(request, token):
    try:
        verification.verify(token=token, user=request.user)
    except ValidationError as exc:
        return render(
            request, "registration/verify_email_failed.html", {"reason": exc.messages[0]}, status=400
        )
    messages.success(request, f"{request.user.email} is verified. Create an API key to start.")
    return redirect("console:keys")


@login_required
@require_POST
def resend_verification(request):
    user = request.user
    if user.email_verified:
        messages.info(request, "Your email address is already verified.")
        return redirect("console:overview")
    wait = throttling.check(request, flow="signup", account=user.email)
    if wait:
        messages.error(request, throttling.message(wait))
    else:
        verification.send(user=user, base_url=request.build_absolute_uri("/"))
        messages.success(request, f"We sent a new link to {user.email}. Open it while logged in.")
    return redirect("console:overview")


class LoginView(auth_views.LoginView):
    """Django's login, throttled per IP and per address before any password is checked."""

    def post(self, request, *args, **kwargs):
        wait = throttling.check(request, flow="login", account=request.POST.get("username", ""))
        if wait:
            # An unbound form: touching a bound form's errors would check the password.
            form = self.form_class(request, initial={"username": request.POST.get("username", "")})
            context = self.get_context_data(form=form, throttled=throttling.message(wait))
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)


def admin_login(request):
    """The admin's login, throttled with the same counters as the console's (one budget)."""
    if request.method == "POST":
        wait = throttling.check(request, flow="login", account=request.POST.get("username", ""))
        if wait:
            return render(
                request, "registration/throttled.html", {"message": throttling.message(wait)}, status=429
            )
    return admin.site.login(request)


class PasswordResetView(auth_views.PasswordResetView):
    """Same answer for known and unknown addresses (Django's), throttled per IP and address."""

    def form_valid(self, form):
        wait = throttling.check(self.request, flow="password_reset", account=form.cleaned_data["email"])
        if wait:
            form.add_error(None, throttling.message(wait))
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().form_valid(form)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Setting the new password ends every other session (Django checks each session's password
    hash) and logs this browser in, so the done page can offer to revoke the user's keys."""

    post_reset_login = True
    post_reset_login_backend = MODEL_BACKEND

    def form_valid(self, form):
        response = super().form_valid(form)
        accounts.password_was_reset(user=form.user)
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        if self.request.user.is_authenticated:
            context["own_keys"] = accounts.own_keys(user=self.request.user).count()
        return context


@login_required
@require_POST
def revoke_own_keys(request):
    revoked = accounts.revoke_own_keys(user=request.user)
    messages.success(
        request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''} you created, in every organization."
    )
    return redirect("console:overview")


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


@tenant_required(
    perm=PERM_USE_KEYS,
    denied="Your role cannot use API keys. Ask an owner or admin.",
    if_no_tenant=NoTenant.NOT_FOUND,
)
def api_keys(request, tenant):
    form = ApiKeyForm(request.POST or None)
    created = None
    # Each rendered form carries a one-time nonce: a reload or double-click re-POSTs the same
    # nonce and must not create a second key (the secret itself is never kept to re-show it).
    used = request.session.get(USED_NONCES_KEY, [])
    nonce = request.POST.get("nonce", "")
    if request.method == "POST" and nonce in used:
        messages.info(request, "That key was already created; its secret was shown once and is not stored.")
        return redirect("console:keys")
    if request.method == "POST" and not request.user.email_verified:
        form.add_error(None, verification.UNVERIFIED.format(email=request.user.email))
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
        "can_manage_all": allows(request.user, tenant, PERM_MANAGE_KEYS),
    }
    # The page that shows a secret must not be cached by the browser or a proxy.
    response = render(request, "console/keys.html", context)
    response["Cache-Control"] = "no-store"
    return response


@tenant_required(if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"])
def revoke_api_key(request, tenant, key_id):
    api_key = get_object_or_404(ApiKey.objects.for_tenant(tenant), pk=key_id)
    own = api_key.created_by_id == request.user.pk
    if not (own and allows(request.user, tenant, PERM_USE_KEYS)) and not allows(
        request.user, tenant, PERM_MANAGE_KEYS
    ):
        return forbidden(request, "Only admins can revoke keys created by someone else.")
    keys.revoke_api_key(api_key=api_key)
    messages.success(request, f"Revoked “{api_key.name}” ({api_key.display_prefix}…).")
    return redirect("console:keys")
