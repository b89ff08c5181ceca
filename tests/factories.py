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


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    plan = factory.LazyFunction(lambda: Plan.objects.get(slug="free"))


def member(tenant: Tenant, role: str = Role.MEMBER, **user_kwargs) -> User:
    """A user with ``role`` in ``tenant`` (permissions granted as the app grants them)."""
    user = UserFactory(**user_kwargs)
    accounts.add_member(tenant=tenant, user=user, role=role)
    return user
