"""A member starts a batch from the console, watches it progress, downloads its results, and
cancels another; a bad file is refused next to the form with its line numbers."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.utils import timezone

from batches import storage
from batches.models import Batch, BatchStatus, File
from tenants.constants import Role
from tests.browser.helpers import log_in
from tests.browser.test_console_a11y import UNLABELLED
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


def lines(count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"doc-{n}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "minilm", "input": f"text {n}"},
            }
        ).encode()
        + b"\n"
        for n in range(count)
    )


@pytest.fixture
def no_broker(monkeypatch):
    from batches import submission

    sent = []
    monkeypatch.setattr(submission.celery_app, "send_task", lambda name, args=None, **kw: sent.append(args))
    return sent


def test_start_follow_download_and_cancel(live_server, page, shot, no_broker, tmp_path):
    tenant = TenantFactory(name="Lovelace Labs", slug="lovelace")
    dev = member(tenant, Role.MEMBER, email="ada@lovelace.test", email_verified=True)
    other = TenantFactory(name="Elsewhere")
    log_in(page, live_server.url, dev.email)

    page.get_by_role("link", name="Batches").click()
    page.wait_for_selector("h1:has-text('Batches')")
    assert page.get_by_text("No batches yet.").is_visible()
    assert page.evaluate(UNLABELLED) == []

    # A bad file: the form says which lines are wrong, and nothing is created.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(lines(1) + b"{oops\n" + lines(1))
    page.get_by_label("Input file (JSONL)").set_input_files(str(bad))
    page.get_by_label("Endpoint").select_option("/v1/embeddings")
    page.get_by_role("button", name="Start batch").click()
    error = page.locator(".errors").first
    error.wait_for()
    assert "line 2: is not valid JSON" in error.inner_text()
    assert "line 3: 'custom_id' 'doc-0' is also on line 1" in error.inner_text()
    assert not Batch.objects.exists()

    good = tmp_path / "docs.jsonl"
    good.write_bytes(lines(4))
    page.get_by_label("Input file (JSONL)").set_input_files(str(good))
    page.get_by_label("Endpoint").select_option("/v1/embeddings")
    page.get_by_role("button", name="Start batch").click()
    page.wait_for_selector("text=it is being validated")
    batch = Batch.objects.get(tenant=tenant)
    assert batch.endpoint == "/v1/embeddings" and batch.input_file.filename == "docs.jsonl"
    assert no_broker == [[batch.id]]
    row = page.locator(f"tr[data-batch='{batch.id}']")
    assert "Validating" in row.inner_text()

    # The runner moves it on; the page follows without a reload (htmx polling while active).
    Batch.objects.filter(pk=batch.id).update(
        status=BatchStatus.IN_PROGRESS, model="minilm", request_total=4, request_completed=2,
        request_failed=1, in_progress_at=timezone.now(),
    )  # fmt: skip
    page.wait_for_function(
        "id => document.querySelector(`tr[data-batch='${id}']`).innerText.includes('3 / 4')", arg=batch.id
    )
    assert page.locator(f"tr[data-batch='{batch.id}'] progress").get_attribute("value") == "3"
    assert "In progress" in row.inner_text() and "1 failed" in row.inner_text()
    shot(page, "batches-in-progress")

    output = File(tenant=tenant, purpose="batch_output", filename=f"{batch.id}_output.jsonl", bytes=12)
    output.storage_name = storage.save(
        tenant_id=tenant.pk, file_id=output.id, content=io.BytesIO(b'{"ok": true}')
    )
    output.save()
    Batch.objects.filter(pk=batch.id).update(
        status=BatchStatus.COMPLETED, request_completed=3, output_file=output, completed_at=timezone.now()
    )
    row.get_by_role("link", name="Output").wait_for()
    assert row.get_by_role("button", name="Cancel").count() == 0  # finished: nothing to cancel
    with page.expect_download() as download:
        row.get_by_role("link", name="Output").click()
    assert download.value.suggested_filename == f"{batch.id}_output.jsonl"
    assert open(download.value.path(), "rb").read() == b'{"ok": true}'

    # Another tenant's file is not downloadable through the console.
    theirs = File.objects.create(tenant=other, purpose="batch_output", filename="x.jsonl")
    assert page.request.get(f"{live_server.url}/batches/files/{theirs.id}/").status == 404

    # A second batch, cancelled after confirming.
    page.get_by_label("Input file (JSONL)").set_input_files(str(good))
    page.get_by_label("Endpoint").select_option("/v1/embeddings")
    page.get_by_role("button", name="Start batch").click()
    page.wait_for_selector("text=it is being validated")
    second = Batch.objects.filter(tenant=tenant).exclude(pk=batch.id).get()
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-batch='{second.id}']").get_by_role("button", name="Cancel").click()
    page.wait_for_selector(f"text=Cancelling {second.id}")
    second.refresh_from_db()
    assert second.status == BatchStatus.CANCELLING and second.cancelling_at is not None
    assert re.search("Cancelling", page.locator(f"tr[data-batch='{second.id}']").inner_text())
    shot(page, "batches")
