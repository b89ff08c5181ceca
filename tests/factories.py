"""factory_boy factories shared by the test suites."""

from __future__ import annotations

import factory

from tenants import accounts
from tenants.constants import Role
from tenants.models import Plan, Tenant, User

PASSWORD = "correct-horse-battery-9"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.test")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


def free_plan() -> Plan:
    """The data migration's default plan; transactional tests flush it, so recreate it."""
    plan, _ = Plan.objects.get_or_create(
        slug="free",
        defaults={
            "name": "Free",
            "requests_per_minute": 60,
            "tokens_per_minute": 40_000,
            "max_concurrent_requests": 4,
            "monthly_token_budget": 1_000_000,
            "is_default": True,
        },
    )
    return plan


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    plan = factory.LazyFunction(free_plan)


def member(tenant: Tenant, role: str = Role.MEMBER, **user_kwargs) -> User:
    """A user with ``role`` in ``tenant`` (permissions granted as the app grants them)."""
    user = UserFactory(**user_kwargs)
    accounts.add_member(tenant=tenant, user=user, role=role)
    return user
