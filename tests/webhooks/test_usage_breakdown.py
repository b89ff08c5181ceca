"""Usage per API key and per member: ``/api/v1/usage?group_by=…&key=…`` and the console page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from tenants import keys
from tenants.constants import Role
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db
DAY = datetime(2026, 11, 10, 12, tzinfo=UTC)
RANGE = "start=2026-11-01&end=2026-11-30"


@pytest.fixture
def team():
    priced_model("chat-s", "1.00", "2.00")
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    owner = member(a, Role.OWNER, email="owner@alpha.test")
    dev = member(a, Role.MEMBER, email="dev@alpha.test")
    books = member(a, Role.BILLING, email="books@alpha.test")
    outsider = member(b, Role.OWNER, email="boss@beta.test")
    ci = keys.create_api_key(tenant=a, name="ci", created_by=owner).api_key
    app = keys.create_api_key(tenant=a, name="app", created_by=dev).api_key
    bot = keys.create_api_key(tenant=a, name="bot", created_by=dev).api_key
    foreign = keys.create_api_key(tenant=b, name="theirs", created_by=outsider).api_key
    record(a, "chat-s", DAY, 1_000_000, 0, api_key_id=ci.pk)  # $1
    record(a, "chat-s", DAY, 2_000_000, 1_000_000, api_key_id=app.pk)  # $4
    record(a, "chat-s", DAY + timedelta(days=1), 0, 500_000, api_key_id=bot.pk)  # $1
    record(a, "chat-s", DAY, 10, 10, api_key_id=app.pk, status="upstream_error", http_status=502)
    record(b, "chat-s", DAY, 7_000_000, 0, api_key_id=foreign.pk)
    return locals()


def get(user, query):
    client = APIClient()
    client.force_login(user)
    return client.get(f"/api/v1/usage?{RANGE}&{query}")


def test_usage_per_key_names_each_key_and_its_member(team):
    body = get(team["owner"], "group_by=key").json()
    rows = {row["name"]: row for row in body["data"]}
    assert list(rows) == ["app", "ci", "bot"]  # most tokens first
    assert rows["app"]["member"] == "dev@alpha.test" and rows["app"]["id"] == str(team["app"].pk)
    assert rows["app"]["requests"] == 2 and rows["app"]["errors"] == 1
    assert rows["app"]["prompt_tokens"] == 2_000_010 and rows["app"]["cost"] == "4.000030"
    assert rows["ci"]["cost"] == "1.000000" and rows["bot"]["total_tokens"] == 500_000
    assert body["totals"]["requests"] == 4 and "theirs" not in rows


def test_usage_per_member_adds_up_their_keys(team):
    body = get(team["owner"], "group_by=member").json()
    rows = {row["name"]: row for row in body["data"]}
    assert set(rows) == {"dev@alpha.test", "owner@alpha.test"}
    assert rows["dev@alpha.test"]["requests"] == 3
    assert rows["dev@alpha.test"]["completion_tokens"] == 1_500_010
    assert rows["owner@alpha.test"]["prompt_tokens"] == 1_000_000
    assert "member" not in rows["dev@alpha.test"]


def test_a_key_filter_narrows_the_daily_rows(team):
    body = get(team["owner"], f"key={team['bot'].pk}").json()
    assert [(row["date"], row["completion_tokens"]) for row in body["data"]] == [("2026-11-11", 500_000)]


def test_members_without_billing_see_tokens_but_no_cost(team):
    body = get(team["dev"], "group_by=key").json()
    assert body["data"] and all("cost" not in row for row in body["data"]) and "cost" not in body["totals"]
    assert get(team["books"], "group_by=key").json()["totals"]["cost"] == "6.000030"


def test_another_tenant_sees_none_of_it_and_cannot_name_a_foreign_key(team):
    body = get(team["outsider"], "group_by=key").json()
    assert [row["name"] for row in body["data"]] == ["theirs"]
    response = get(team["outsider"], f"key={team['app'].pk}")
    assert response.status_code == 400 and "key" in response.json()
    assert get(team["owner"], f"key={team['foreign'].pk}&group_by=key").status_code == 400


@pytest.mark.parametrize("query", ["group_by=model", "key=not-a-uuid"])
def test_bad_parameters_are_400(team, query):
    response = get(team["owner"], query)
    assert response.status_code == 400 and query.split("=")[0] in response.json()


def console_get(client, user, query=""):
    client.force_login(user)
    return client.get(f"/usage/?{RANGE}&{query}")


def test_the_console_shows_usage_per_key_and_per_member(team, client):
    page = console_get(client, team["owner"]).content.decode()
    assert "By API key" in page and "dev@alpha.test" in page and "usage-key-chart" in page
    assert "theirs" not in page
    page = console_get(client, team["owner"], "group_by=member").content.decode()
    assert "By member" in page and "owner@alpha.test" in page


def test_the_console_key_filter_narrows_the_breakdown(team, client):
    response = console_get(client, team["owner"], f"key={team['bot'].pk}")
    breakdown = response.content.decode().split("usage-breakdown-title", 1)[1]
    assert "<td>bot" in breakdown and "<td>app" not in breakdown and "<td>ci" not in breakdown
    # Another tenant's key id is refused with a message, never a 500 and never its figures.
    response = console_get(client, team["owner"], f"key={team['foreign'].pk}")
    assert response.status_code == 200 and "not one of this organization" in response.content.decode()
    assert console_get(client, team["owner"], "key=nonsense&group_by=bogus").status_code == 200


def test_the_console_shows_cost_only_to_billing_roles(team, client):
    breakdown = console_get(client, team["dev"]).content.decode().split("usage-breakdown-title", 1)[1]
    assert "Est. cost" not in breakdown
    breakdown = console_get(client, team["books"]).content.decode().split("usage-breakdown-title", 1)[1]
    assert "Est. cost" in breakdown
