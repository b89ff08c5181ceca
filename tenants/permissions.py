"""The one check of a tenant object permission, shared by the console and the management API.

Roles grant django-guardian object permissions on the Tenant (``tenants.constants``:
``ROLE_PERMISSIONS``); every check names a codename from there and goes through ``allows``, so
the ``tenants.`` app label is written once and a user without a tenant is refused the same way.
"""

from __future__ import annotations

from typing import Any

APP_LABEL = "tenants"


def full_name(codename: str) -> str:
    """``use_api_keys`` → ``tenants.use_api_keys``, the name ``User.has_perm`` expects."""
    return f"{APP_LABEL}.{codename}"


def allows(user: Any, tenant: Any, codename: str) -> bool:
    """Whether ``user`` holds the permission ``codename`` on ``tenant`` (False without a tenant)."""
    if not tenant or user is None or not user.is_authenticated:
        return False
    return bool(user.has_perm(full_name(codename), tenant))
