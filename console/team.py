"""Console: the team page (members, roles, invitations) and accepting an invitation."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render

from console.access import NoTenant, forbidden, tenant_required
from console.forms import AcceptSignupForm, InviteForm
from tenants import accounts, invitations, throttling, verification
from tenants import membership as memberships
from tenants.constants import PERM_MANAGE_MEMBERS, Role
from tenants.middleware import SESSION_KEY
from tenants.models import Invitation, Membership, User
from tenants.permissions import allows

# The team's actions (POST only): members without the permission, and users in no organization, get a 403.
manager_required = tenant_required(
    perm=PERM_MANAGE_MEMBERS,
    denied="Only owners and admins can manage the team.",
    if_no_tenant=NoTenant.FORBIDDEN,
    methods=["POST"],
)


@tenant_required(if_no_tenant=NoTenant.OVERVIEW)
def team(request, tenant):
    can_manage = allows(request.user, tenant, PERM_MANAGE_MEMBERS)
    form = InviteForm(request.POST or None)
    wait = None
    if request.method == "POST":
        if not can_manage:
            return forbidden(request, "Only owners and admins can invite people.")
        wait = form.is_valid() and throttling.check(request, flow="invitation", account=str(request.user.pk))
        if wait:
            form.add_error(None, throttling.message(wait))
        elif form.is_valid():
            try:
                verification.require_verified(request.user)
                accounts.check_can_assign(actor=request.membership, role=form.cleaned_data["role"])
                sent = invitations.invite(
                    tenant=tenant,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    invited_by=request.user,
                    base_url=request.build_absolute_uri("/"),
                )
            except verification.Unverified as exc:
                form.add_error(None, str(exc))
            except invitations.LimitReached as exc:
                form.add_error(None, str(exc))
            except PermissionDenied as exc:
                form.add_error("role", str(exc))
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                messages.success(request, f"Invitation sent to {sent.invitation.email}.")
                return redirect("console:team")
    context = {
        "form": form,
        "can_manage": can_manage,
        "members": Membership.objects.for_tenant(tenant).select_related("user").order_by("user__email"),
        "pending": Invitation.objects.pending().filter(tenant=tenant) if can_manage else [],
        "roles": Role.choices,
    }
    return render(request, "console/team.html", context, status=429 if wait else 200)


@manager_required
def change_role(request, tenant, membership_id):
    membership = get_object_or_404(
        Membership.objects.for_tenant(tenant).select_related("user"), pk=membership_id
    )
    role = request.POST.get("role", "")
    if role not in Role.values:
        messages.error(request, "Choose one of the listed roles.")
        return redirect("console:team")
    try:
        accounts.check_can_assign(actor=request.membership, role=role, target=membership)
        accounts.change_role(membership=membership, role=role)
    except (PermissionDenied, ValidationError) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
    else:
        messages.success(request, f"{membership.user.email} is now {Role(role).label}.")
    return redirect("console:team")


@manager_required
def remove_member(request, tenant, membership_id):
    membership = get_object_or_404(
        Membership.objects.for_tenant(tenant).select_related("user"), pk=membership_id
    )
    try:
        accounts.check_can_assign(actor=request.membership, role=membership.role, target=membership)
        memberships.remove_member(tenant=tenant, user=membership.user, acting_user=request.user)
    except (PermissionDenied, ValidationError) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
    else:
        messages.success(request, f"Removed {membership.user.email} from {tenant.name}.")
    return redirect("console:team")


@manager_required
def revoke_invitation(request, tenant, invitation_id):
    invitation = get_object_or_404(Invitation.objects.pending().filter(tenant=tenant), pk=invitation_id)
    invitations.revoke(invitation=invitation)
    messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect("console:team")


def accept_invitation(request, token):
    invitation = invitations.find(token)
    if invitation is None:
        return render(request, "console/invitation_invalid.html", status=404)
    user = request.user if request.user.is_authenticated else None
    existing = User.objects.filter(email__iexact=invitation.email).first()
    form = (
        AcceptSignupForm(request.POST or None, email=invitation.email) if not user and not existing else None
    )
    if request.method == "POST":
        try:
            with transaction.atomic():
                if user is None and form is not None and form.is_valid():
                    # The link was mailed to this address: following it verifies it.
                    user = User.objects.create_user(
                        email=invitation.email, password=form.cleaned_data["password"], email_verified=True
                    )
                    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                if user is not None:
                    membership = invitations.accept(token=token, user=user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            if user is not None:
                request.session[SESSION_KEY] = str(membership.tenant_id)
                messages.success(
                    request, f"You joined {membership.tenant.name} as {membership.get_role_display()}."
                )
                return redirect("console:overview")
    context = {"invitation": invitation, "form": form, "needs_login": user is None and existing is not None}
    return render(request, "console/invitation.html", context)
