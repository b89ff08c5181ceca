"""Creating tenants, signing up, and managing memberships and their roles.

Roles are enforced through django-guardian object permissions on the Tenant: every change of a
membership re-grants exactly the permissions of its role (constants.ROLE_PERMISSIONS).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils.text import slugify
from guardian.shortcuts import assign_perm, remove_perm

from tenants import mirror
from tenants.constants import ALL_ROLE_PERMISSIONS, ROLE_PERMISSIONS, Role, TenantStatus
from tenants.models import Membership, Plan, Tenant, User


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
        remove_perm(f"tenants.{perm}", membership.user, membership.tenant)
    for perm in wanted:
        assign_perm(f"tenants.{perm}", membership.user, membership.tenant)


def create_tenant(*, name: str, owner: User, plan: Plan | None = None, slug: str | None = None) -> Tenant:
    with transaction.atomic():
        tenant = Tenant(name=name, slug=slug or unique_slug(name), plan=plan or default_plan())
        tenant.full_clean()
        tenant.save()
        add_member(tenant=tenant, user=owner, role=Role.OWNER)
        transaction.on_commit(lambda: mirror.publish_tenant(tenant))
    return tenant


def signup(*, email: str, password: str, organization: str) -> tuple[User, Tenant]:
    """A new person with a new organization, owned by them."""
    with transaction.atomic():
        user = User.objects.create_user(email=email, password=password)
        tenant = create_tenant(name=organization, owner=user)
    return user, tenant


def add_member(*, tenant: Tenant, user: User, role: str = Role.MEMBER) -> Membership:
    with transaction.atomic():
        membership, _ = Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": role})
        if membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
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
        locked.role = role
        locked.save(update_fields=["role"])
        sync_role_permissions(locked)
    return locked


def remove_member(*, membership: Membership) -> None:
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("tenant", "user").get(pk=membership.pk)
        Tenant.objects.select_for_update().filter(pk=locked.tenant_id).first()
        if locked.role == Role.OWNER and not _owners_left(locked.tenant, locked):
            raise ValidationError("A tenant must keep at least one owner.")
        for perm in ALL_ROLE_PERMISSIONS:
            remove_perm(f"tenants.{perm}", locked.user, locked.tenant)
        locked.delete()


def set_status(*, tenant: Tenant, status: str) -> Tenant:
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(status=TenantStatus(status))
        tenant.status = status
        transaction.on_commit(lambda: mirror.publish_tenant(tenant))
    return tenant
