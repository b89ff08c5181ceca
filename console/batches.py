"""Console: the tenant's batches (upload a JSONL file and start a batch, follow it, download the
results, cancel).

The page calls the same services as ``/v1/files`` and ``/v1/batches`` (``batches.files``,
``batches.submission``), so a bad file gets the same line-numbered errors, shown next to the form.
Every member sees the batches; starting and cancelling need ``use_api_keys`` (what calling the API
needs). While a batch is active the table polls its rows (htmx, every few seconds) and stops once
none is.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from batches import files, submission
from batches.errors import ApiError
from batches.internal import file_content_response
from batches.models import TERMINAL_STATUSES, BatchEndpoint
from console.access import NoTenant, forbidden, tenant_required
from tenants.constants import PERM_USE_KEYS
from tenants.permissions import allows

DENIED = "Your role does not allow starting or cancelling batches. Ask an owner or admin."
POLL_SECONDS = 3
SHOWN = 50


class BatchForm(forms.Form):
    file = forms.FileField(
        label="Input file (JSONL)",
        help_text='One request per line: {"custom_id": "…", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "…", …}}. Every line names the same endpoint and model.',
    )
    endpoint = forms.ChoiceField(label="Endpoint", choices=BatchEndpoint.choices)


def _rows_context(tenant) -> dict:
    batches = list(
        submission.tenant_batches(tenant).select_related("output_file", "error_file", "input_file")[:SHOWN]
    )
    rows = []
    for batch in batches:
        done = batch.request_completed + batch.request_failed
        rows.append(
            {
                "batch": batch,
                "done": done,
                "percent": round(100 * done / batch.request_total) if batch.request_total else 0,
                "active": batch.status not in TERMINAL_STATUSES,
                "output": batch.output_file
                if batch.output_file and not batch.output_file.deleted_at
                else None,
                "errors": batch.error_file if batch.error_file and not batch.error_file.deleted_at else None,
            }
        )
    return {"rows": rows, "polling": any(r["active"] for r in rows), "poll_seconds": POLL_SECONDS}


@tenant_required(if_no_tenant=NoTenant.OVERVIEW)
def batches_page(request: HttpRequest, tenant) -> HttpResponse:
    can_submit = allows(request.user, tenant, PERM_USE_KEYS)
    form = BatchForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        if not can_submit:
            return forbidden(request, DENIED)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                input_file = files.upload_file(
                    tenant=tenant,
                    purpose="batch",
                    content=upload.file,
                    size=upload.size,
                    filename=upload.name,
                )
                batch = submission.create_batch(
                    tenant=tenant,
                    input_file_id=input_file.id,
                    endpoint=form.cleaned_data["endpoint"],
                    completion_window="24h",
                )
            except ApiError as exc:
                form.add_error("file" if exc.param == "file" else None, exc.message)
            else:
                messages.success(request, f"Batch {batch.id} created; it is being validated.")
                return redirect("console:batches")
    context = {"form": form, "can_submit": can_submit, **_rows_context(tenant)}
    return render(request, "console/batches.html", context, status=400 if form.errors else 200)


@tenant_required(if_no_tenant=NoTenant.NOT_FOUND, methods=["GET"])
def batch_rows(request: HttpRequest, tenant) -> HttpResponse:
    context = {"can_submit": allows(request.user, tenant, PERM_USE_KEYS), **_rows_context(tenant)}
    return render(request, "console/_batch_rows.html", context)


@tenant_required(perm=PERM_USE_KEYS, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"])
def cancel_batch(request: HttpRequest, tenant, batch_id: str) -> HttpResponse:
    try:
        batch = submission.cancel_batch(tenant=tenant, batch_id=batch_id)
    except ApiError as exc:
        if exc.status == 404:
            raise Http404(exc.message) from None
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Cancelling {batch.id}: requests already sent finish, the rest are skipped."
        )
    return redirect("console:batches")


@tenant_required(if_no_tenant=NoTenant.NOT_FOUND, methods=["GET"])
def download_file(request: HttpRequest, tenant, file_id: str) -> HttpResponse:
    try:
        return file_content_response(files.get_file(tenant=tenant, file_id=file_id))
    except ApiError as exc:
        raise Http404(exc.message) from None
