"""Choices and role → permission mapping for tenants."""

from django.db import models

from contract import api_keys


class TenantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    BILLING = "billing", "Billing"


class KeyKind(models.TextChoices):
    INFERENCE = api_keys.INFERENCE, "Inference (gateway /v1)"
    MANAGEMENT = api_keys.MANAGEMENT, "Management (API /api/v1)"


# Object permissions on a Tenant (declared in Tenant.Meta.permissions), granted per role through
# django-guardian when a membership is created or its role changes.
PERM_VIEW = "view_tenant"
PERM_USE_KEYS = "use_api_keys"  # create/revoke one's own keys, list the tenant's keys
PERM_MANAGE_KEYS = "manage_api_keys"  # revoke anyone's keys
PERM_MANAGE_MEMBERS = "manage_members"
PERM_MANAGE_SETTINGS = "manage_settings"
PERM_VIEW_BILLING = "view_billing"
PERM_MANAGE_BILLING = "manage_billing"

TENANT_PERMISSIONS = [
    (PERM_USE_KEYS, "Create and use API keys"),
    (PERM_MANAGE_KEYS, "Revoke any API key of the tenant"),
    (PERM_MANAGE_MEMBERS, "Invite, change and remove members"),
    (PERM_MANAGE_SETTINGS, "Change the organization's settings"),
    (PERM_VIEW_BILLING, "See usage costs and invoices"),
    (PERM_MANAGE_BILLING, "Change spend limits and payment settings"),
]

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(
        {
            PERM_VIEW,
            PERM_USE_KEYS,
            PERM_MANAGE_KEYS,
            PERM_MANAGE_MEMBERS,
            PERM_MANAGE_SETTINGS,
            PERM_VIEW_BILLING,
            PERM_MANAGE_BILLING,
        }
    ),
    Role.ADMIN: frozenset(
        {
            PERM_VIEW,
            PERM_USE_KEYS,
            PERM_MANAGE_KEYS,
            PERM_MANAGE_MEMBERS,
            PERM_MANAGE_SETTINGS,
            PERM_VIEW_BILLING,
        }
    ),
    Role.MEMBER: frozenset({PERM_VIEW, PERM_USE_KEYS}),
    Role.BILLING: frozenset({PERM_VIEW, PERM_VIEW_BILLING, PERM_MANAGE_BILLING}),
}
ALL_ROLE_PERMISSIONS = frozenset().union(*ROLE_PERMISSIONS.values())

# Visible key prefixes name the key's role (like hc's hcw_/hcr_).
KEY_PREFIX = {kind: api_keys.KEY_PREFIXES[kind.value] for kind in KeyKind}
KEY_LOOKUP_LENGTH = api_keys.LOOKUP_LENGTH
