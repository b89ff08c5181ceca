"""Creating tenants, signing up, and managing memberships and their roles.

Roles are enforced through django-guardian object permissions on the Tenant: every change of a
membership re-grants exactly the permissions of its role (constants.ROLE_PERMISSIONS).

Sign-up never tells the person at the form whether an address already has an account: both
answers are the same page, and the address's owner is mailed instead (tenants/verification.py
covers the link a new account must follow).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.text import slugify
from guardian.shortcuts import assign_perm, remove_perm

from audit import trail
from tenants import keys, mirror, verification
from tenants.constants import ALL_ROLE_PERMISSIONS, ROLE_PERMISSIONS, Role, TenantStatus
from tenants.models import ApiKey, Membership, Plan, Tenant, User
from tenants.permissions import full_name


def default_plan() -> Plan:
    plan = (
        Plan.objects.filter(is_default=True).first()
        or Plan.objects.filter(slug=settings.DEFAULT_PLAN_SLUG).first()
    )
    if plan is None:
        raise ValidationError("No default plan exists; create one in the admin.")
    return plan


def unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def sync_role_permissions(membership: Membership) -> None:
    wanted = ROLE_PERMISSIONS[Role(membership.role)]
    for perm in ALL_ROLE_PERMISSIONS - wanted:
        remove_perm(full_name(perm), membership.user, membership.tenant)
    for perm in wanted:
        assign_perm(full_name(perm), membership.user, membership.tenant)


def create_tenant(*, name: str, owner: User, plan: Plan | None = None, slug: str | None = None) -> Tenant:
    with transaction.atomic():
        tenant = Tenant(name=name, slug=slug or unique_slug(name), plan=plan or default_plan())
        tenant.full_clean()
        tenant.save()
        trail.record(
            action="tenant.created",
            tenant=tenant,
            target=tenant,
            summary=f"organization {tenant.name!r} created, owned by {owner.email}",
            after=trail.fields(tenant, ("name", "slug", "plan_id")),
        )
        add_member(tenant=tenant, user=owner, role=Role.OWNER)
        transaction.on_commit(lambda: mirror.publish_tenant(tenant))
    return tenant


def signup(*, email: str, password: str, organization: str, base_url: str) -> User | None:
    """A new, unverified person with a new organization owned by them, and a verification mail.

    Returns None when the address already has an account: nothing is created and its owner gets
    a notice instead. The caller must answer exactly as for a new account.
    """
    email = email.strip().lower()
    existing = User.objects.filter(email__iexact=email).first()
    if existing is None:
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=email, password=password, email_verified=False)
                create_tenant(name=organization, owner=user)
                verification.send(user=user, base_url=base_url)
            return user
        except IntegrityError:  # the same address signed up at the same moment
            existing = User.objects.filter(email__iexact=email).first()
            if existing is None:
                raise
    # Hash anyway, so the answer takes as long as creating an account does.
    make_password(password)
    _notify_existing_account(existing, base_url=base_url)
    return None


def _notify_existing_account(user: User, *, base_url: str) -> None:
    base = base_url.rstrip("/")
    transaction.on_commit(
        lambda: send_mail(
            subject="Someone tried to sign up for Berth with your address",
            message=(
                f"Someone (perhaps you) tried to create a Berth account for {user.email}, "
                "which already has one, so nothing was created.\n\n"
                f"Log in: {base}{reverse('login')}\n"
                f"Forgot your password? Choose a new one: {base}{reverse('password_reset')}\n\n"
                "If it was not you, you need not do anything."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[user.email],
        )
    )


def password_was_reset(*, user: User) -> None:
    """A reset link was followed: the mailbox is the owner's, so the address counts as verified.

    The new password changes the session hash, so Django ends every other session of the user
    on its next request; the keys they made are offered for revocation (``revoke_own_keys``).
    """
    verification.mark_verified(user=user)


def own_keys(*, user: User):
    """Usable keys ``user`` created, in every tenant (inference and management)."""
    return ApiKey.objects.usable().filter(created_by=user)


def revoke_own_keys(*, user: User) -> int:
    """Revoke every usable key ``user`` created; how many were revoked."""
    revoked = 0
    for api_key in own_keys(user=user).select_related("tenant"):
        keys.revoke_api_key(api_key=api_key)
        revoked += 1
    return revoked


def add_member(*, tenant: Tenant, user: User, role: str = Role.MEMBER) -> Membership:
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(
            tenant=tenant, user=user, defaults={"role": role}
        )
        previous = membership.role
        if membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        if created or previous != role:
            trail.record(
                action="member.added" if created else "member.role_changed",
                tenant=tenant,
                target=membership,
                summary=f"{user.email} added as {role}" if created else f"{user.email}: {previous} → {role}",
                before=None if created else {"role": previous},
                after={"user": user.email, "role": role},
            )
        sync_role_permissions(membership)
    return membership


def check_can_assign(*, actor: Membership | None, role: str, target: Membership | None = None) -> None:
    """Only owners may grant the owner role or change/remove an owner (no self-promotion by admins)."""
    touches_owner = role == Role.OWNER or (target is not None and target.role == Role.OWNER)
    if touches_owner and (actor is None or actor.role != Role.OWNER):
        raise PermissionDenied("Only an owner can grant, change or remove the owner role.")


def _owners_left(tenant: Tenant, excluding: Membership) -> int:
    return tenant.memberships.filter(role=Role.OWNER).exclude(pk=excluding.pk).count()


def change_role(*, membership: Membership, role: str) -> Membership:
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
        Tenant.objects.select_for_update().filter(pk=locked.tenant_id).first()
        if locked.role == Role.OWNER and role != Role.OWNER and not _owners_left(locked.tenant, locked):
            raise ValidationError("A tenant must keep at least one owner.")
        previous = locked.role
        locked.role = role
        locked.save(update_fields=["role"])
        sync_role_permissions(locked)
        if previous != role:
            trail.record(
                action="member.role_changed",
                tenant=locked.tenant,
                target=locked,
                summary=f"{locked.user.email}: {previous} → {role}",
                before={"role": previous},
                after={"role": role},
            )
    return locked


def remove_member(*, membership: Membership) -> None:
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
        Tenant.objects.select_for_update().filter(pk=locked.tenant_id).first()
        if locked.role == Role.OWNER and not _owners_left(locked.tenant, locked):
            raise ValidationError("A tenant must keep at least one owner.")
        for perm in ALL_ROLE_PERMISSIONS:
            remove_perm(full_name(perm), locked.user, locked.tenant)
        trail.record(
            action="member.removed",
            tenant=locked.tenant,
            target=locked,
            summary=f"{locked.user.email} ({locked.role}) removed",
            before={"user": locked.user.email, "role": locked.role},
        )
        locked.delete()


def set_status(*, tenant: Tenant, status: str) -> Tenant:
    with transaction.atomic():
        previous = (
            Tenant.objects.select_for_update().filter(pk=tenant.pk).values_list("status", flat=True).first()
        )
        Tenant.objects.filter(pk=tenant.pk).update(status=TenantStatus(status))
        tenant.status = status
        if previous != status:
            suspended = status == TenantStatus.SUSPENDED
            trail.record(
                action="tenant.suspended" if suspended else "tenant.resumed",
                tenant=tenant,
                target=tenant,
                summary=f"{tenant.name} {'suspended' if suspended else 'resumed'}",
                before={"status": previous},
                after={"status": status},
            )
        transaction.on_commit(lambda: mirror.publish_tenant(tenant))
    return tenant


def update_tenant(*, tenant: Tenant) -> Tenant:
    """Save an edited tenant (slug, status, plan: what the gateway reads) and republish it."""
    with transaction.atomic():
        before, after = trail.diff(tenant)
        tenant.save()
        if "plan_id" in after:
            trail.record(
                action="plan.changed",
                tenant=tenant,
                target=tenant,
                summary=f"{tenant.name}: plan changed",
                before={"plan_id": before["plan_id"]},
                after={"plan_id": after["plan_id"]},
            )
            before.pop("plan_id")
            after.pop("plan_id")
        if after:
            status_change = set(after) == {"status"}
            if status_change:
                suspended = after["status"] == TenantStatus.SUSPENDED
                action = "tenant.suspended" if suspended else "tenant.resumed"
            else:
                action = "tenant.settings_changed"
            trail.record(
                action=action,
                tenant=tenant,
                target=tenant,
                summary=f"{tenant.name}: {', '.join(sorted(after))} changed",
                before=before,
                after=after,
            )
        transaction.on_commit(lambda: mirror.publish_tenant(tenant))
    return tenant
