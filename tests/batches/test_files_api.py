"""``/v1/files`` with the real ``openai`` SDK through the gateway to the control plane."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest
from django.core.files.storage import storages
from django.test import Client

from batches.models import File
from tenants import mirror
from tenants.constants import TenantStatus
from tests.batches.api_fixtures import (  # noqa: F401
    TOKEN,
    _files_gateway_process,
    caller,
    files_gateway,
    other,
    sent_tasks,
)

pytestmark = pytest.mark.django_db(transaction=True)


def jsonl(*lines) -> bytes:
    return b"".join(
        (json.dumps(line) if not isinstance(line, str) else line).encode() + b"\n" for line in lines
    )


def request(n: int, *, model="m1", url="/v1/chat/completions") -> dict:
    return {
        "custom_id": f"req-{n}",
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": f"hello {n}"}]},
    }


GOOD = jsonl(request(1), request(2), request(3))


def test_upload_retrieve_list_content_delete(caller):  # noqa: F811
    client = caller.client
    created = client.files.create(file=("input.jsonl", GOOD), purpose="batch")
    assert created.id.startswith("file-")
    assert created.object == "file" and created.purpose == "batch"
    assert created.bytes == len(GOOD) and created.filename == "input.jsonl"
    assert created.created_at > 0

    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    raw = client.files.with_raw_response.content(created.id)
    assert raw.headers["content-type"] == "application/jsonl"
    assert "input.jsonl" in raw.headers["content-disposition"]
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.content == GOOD

    row = File.objects.get(pk=created.id)
    assert row.storage_name == f"{caller.tenant.pk}/{created.id}"  # never the tenant's filename
    assert storages["berth_files"].exists(row.storage_name)

    deleted = client.files.delete(created.id)
    assert deleted.model_dump() == {"id": created.id, "object": "file", "deleted": True}
    assert not storages["berth_files"].exists(row.storage_name)
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(created.id)
    assert err.value.code == "file_not_found"
    assert [f.id for f in client.files.list()] == []


def test_list_pages_like_openai(caller):  # noqa: F811
    client = caller.client
    ids = [client.files.create(file=(f"f{n}.jsonl", GOOD), purpose="batch").id for n in range(3)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2]  # newest first
    assert page.has_more is True
    raw = client.files.with_raw_response.list(limit=2).http_response.json()
    assert raw["first_id"] == ids[2] and raw["last_id"] == ids[1] and raw["object"] == "list"
    # The SDK follows the cursor (after=last id) to the end.
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]
    assert [f.id for f in client.files.list(order="asc")] == ids
    assert [f.id for f in client.files.list(purpose="batch_output")] == []
    with pytest.raises(openai.BadRequestError) as err:
        client.files.list(purpose="nonsense")
    assert err.value.param == "purpose"
    with pytest.raises(openai.BadRequestError):
        client.files.list(limit=0)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (jsonl(request(1), "not json", request(3)), ["line 2: is not valid JSON"]),
        (
            jsonl(request(1), {**request(2), "custom_id": 5}, {**request(3), "method": "GET"}),
            ["line 2: 'custom_id' must be a non-empty string", "line 3: 'method' must be \"POST\""],
        ),
        (jsonl(request(1), request(1)), ["line 2: 'custom_id' 'req-1' is also on line 1"]),
        (jsonl(request(1), {**request(2), "url": "/v1/images"}), ["line 2: 'url' must be one of"]),
        (jsonl(request(1), {**request(2), "body": "x"}), ["line 2: 'body' must be a JSON object"]),
        (jsonl(request(1), request(2, model="other")), ["line 2: 'body.model' 'other' differs from line 1"]),
        (jsonl(request(1), request(2, url="/v1/embeddings")), ["one endpoint per batch"]),
        (jsonl(request(1), "", request(3)), ["line 2: is empty"]),
        (jsonl("[1, 2]"), ["line 1: must be a JSON object"]),
        (b"\n\n", ["The file has no requests"]),
    ],
)
def test_batch_input_is_checked_at_upload(caller, content, fragments):  # noqa: F811
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.files.create(file=("bad.jsonl", content), purpose="batch")
    assert err.value.code == "invalid_file_format"
    assert err.value.param == "file"
    for fragment in fragments:
        assert fragment in err.value.message
    assert not File.objects.exists()


def test_many_bad_lines_show_the_first_ten(caller):  # noqa: F811
    content = jsonl(*["oops"] * 14)
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.files.create(file=("bad.jsonl", content), purpose="batch")
    body = err.value.body
    assert [line["line"] for line in body["lines"]] == list(range(1, 11))
    assert body["error_count"] == 14
    assert "and 4 more" in err.value.message


def test_trailing_blank_lines_are_fine(caller):  # noqa: F811
    created = caller.client.files.create(file=("ok.jsonl", GOOD + b"\n\n"), purpose="batch")
    assert created.bytes == len(GOOD) + 2


@pytest.mark.parametrize(
    ("purpose", "fragment"),
    [("fine-tune", "accepts 'batch' only"), ("batch_output", "written by batches"), ("", "Missing")],
)
def test_only_batch_uploads(caller, purpose, fragment):  # noqa: F811
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.files.create(file=("x.jsonl", GOOD), purpose=purpose)
    assert err.value.param == "purpose"
    assert fragment in err.value.message


def test_size_limit_is_413(caller, settings):  # noqa: F811
    settings.FILES_MAX_BYTES = len(GOOD) - 1
    with pytest.raises(openai.APIStatusError) as err:
        caller.client.files.create(file=("big.jsonl", GOOD), purpose="batch")
    assert err.value.status_code == 413
    assert err.value.code == "file_too_large"
    # Far above the limit: refused from the length alone, and the gateway relays it.
    settings.FILES_MAX_BYTES = 1024
    big = jsonl(*(request(n) for n in range(2000)))
    with pytest.raises(openai.APIStatusError) as err:
        caller.client.files.create(file=("big.jsonl", big), purpose="batch")
    assert err.value.status_code == 413
    assert not File.objects.exists()


def test_file_count_quota(caller, settings):  # noqa: F811
    settings.FILES_MAX_PER_TENANT = 1
    caller.client.files.create(file=("a.jsonl", GOOD), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        caller.client.files.create(file=("b.jsonl", GOOD), purpose="batch")
    assert err.value.code == "file_quota_exceeded"


def test_another_tenants_file_is_404(caller, other):  # noqa: F811
    mine = caller.client.files.create(file=("mine.jsonl", GOOD), purpose="batch")
    for call in (
        lambda: other.client.files.retrieve(mine.id),
        lambda: other.client.files.content(mine.id),
        lambda: other.client.files.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [f.id for f in other.client.files.list()] == []
    with pytest.raises(openai.NotFoundError):
        other.client.files.list(after=mine.id)
    assert caller.client.files.content(mine.id).read() == GOOD  # untouched


def test_runner_files_are_readable_and_deletable(caller):  # noqa: F811
    from batches import storage

    row = File(tenant=caller.tenant, purpose="batch_output", filename="batch_x_output.jsonl", bytes=3)
    import io

    row.storage_name = storage.save(tenant_id=caller.tenant.pk, file_id=row.id, content=io.BytesIO(b"{}\n"))
    row.save()
    assert caller.client.files.content(row.id).read() == b"{}\n"
    assert [f.id for f in caller.client.files.list(purpose="batch_output")] == [row.id]
    assert caller.client.files.delete(row.id).deleted is True


def test_the_gateway_authenticates(files_gateway, caller):  # noqa: F811
    answer = httpx.get(files_gateway.url + "/v1/files", headers={"Authorization": "Bearer sk-nope"})
    assert answer.status_code == 401
    answer = httpx.get(
        files_gateway.url + "/v1/files/x/y/z", headers={"Authorization": f"Bearer {caller.key}"}
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_url"
    caller.tenant.status = TenantStatus.SUSPENDED
    caller.tenant.save()
    mirror.publish_tenant(caller.tenant)
    import time

    time.sleep(1.1)  # the gateway's ≤1 s cache
    with pytest.raises(openai.PermissionDeniedError) as err:
        caller.client.files.list()
    assert err.value.code == "organization_suspended"


def test_internal_views_refuse_without_the_token(caller, settings):  # noqa: F811
    web = Client()
    tenant = {"HTTP_X_BERTH_TENANT": str(caller.tenant.pk)}
    for path in ("/internal/v1/files", "/internal/v1/batches", "/internal/v1/files/file-x/content"):
        assert web.get(path, **tenant).status_code == 401
        assert web.get(path, HTTP_AUTHORIZATION="Bearer wrong", **tenant).status_code == 401
        assert web.get(path, HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **tenant).status_code in (200, 404)
    answer = web.post("/internal/v1/files", {"purpose": "batch"}, **tenant)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_token"
    # A tenant header that names nobody is refused even with the token.
    assert web.get("/internal/v1/files", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 401
    # No token configured (a DEBUG start-up): still closed, never open.
    settings.INTERNAL_TOKEN = None
    answer = web.get("/internal/v1/files", HTTP_AUTHORIZATION="Bearer ", **tenant)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "internal_token_unset"


def test_a_large_upload_streams_through(caller):  # noqa: F811
    # Several MB arrive at the gateway in many ASGI messages and leave it as they arrive.
    content = jsonl(*(request(n) for n in range(30_000)))
    assert len(content) > 4 * 1024 * 1024
    created = caller.client.files.create(file=("big.jsonl", content), purpose="batch")
    assert created.bytes == len(content)
    assert caller.client.files.content(created.id).content == content
    assert File.objects.get(pk=created.id).sha256 == hashlib.sha256(content).hexdigest()


def test_control_plane_unreachable_or_unconfigured(caller):  # noqa: F811
    from tests.gateway.conftest import free_port, start_gateway

    dead = start_gateway(
        BERTH_GATEWAY_CONTROL_PLANE_URL=f"http://127.0.0.1:{free_port()}",
        BERTH_INTERNAL_TOKEN=TOKEN,
        BERTH_FILES_MAX_BYTES="1000",
    )
    untokened = start_gateway(BERTH_INTERNAL_TOKEN="")
    try:
        headers = {"Authorization": f"Bearer {caller.key}"}
        answer = httpx.get(dead.url + "/v1/files", headers=headers)
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "control_plane_unavailable"
        answer = httpx.get(untokened.url + "/v1/batches", headers=headers)
        assert answer.status_code == 503
        assert "BERTH_INTERNAL_TOKEN" in answer.json()["error"]["message"]
        # A body announced beyond the limit is refused by the gateway itself, before any forwarding
        # (this gateway's control plane is not even there).
        big = jsonl(*(request(n) for n in range(1000)))
        answer = httpx.post(
            dead.url + "/v1/files",
            headers=headers,
            files={"file": ("x.jsonl", big)},
            data={"purpose": "batch"},
        )
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "file_too_large"
    finally:
        dead.stop()
        untokened.stop()


def test_a_broken_multipart_body_is_an_openai_400(files_gateway, caller):  # noqa: F811
    answer = httpx.post(
        files_gateway.url + "/v1/files",
        content=b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n',
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "multipart/form-data"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    answer = httpx.post(
        files_gateway.url + "/v1/files",
        json={"purpose": "batch"},
        headers={"Authorization": f"Bearer {caller.key}"},
    )
    assert answer.status_code == 400
    assert "multipart/form-data" in answer.json()["error"]["message"]
