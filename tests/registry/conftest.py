"""Registry tests need the default plan that transactional tests elsewhere may have flushed."""

import pytest


@pytest.fixture
def default_plan(db):
    from tenants.models import Plan

    plan, _ = Plan.objects.get_or_create(slug="free", defaults={"name": "Free", "is_default": True})
    return plan


@pytest.fixture(autouse=True)
def _ensure_default_plan(request):
    if request.node.get_closest_marker("django_db"):
        request.getfixturevalue("default_plan")
