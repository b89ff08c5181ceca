from __future__ import annotations

import pytest

from tenants.models import User


@pytest.fixture
def staff_user(db):
    return User.objects.create_user(email="ops@berth.test", password="x-Long-pass-1", is_staff=True)


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client
