"""``/internal/v1/files*`` and ``/internal/v1/batches*``: the Files and Batch APIs behind the gateway.

Tenants call ``/v1/files`` and ``/v1/batches`` on the gateway (the ``openai`` SDK's base URL),
which authenticates the API key as for inference (401, suspended tenant 403) and forwards the
request here with ``Authorization: Bearer <BERTH_INTERNAL_TOKEN>``, ``X-Berth-Tenant`` and
``X-Berth-Key`` (``gateway/control_plane.py``). The tenant header is trusted only with that token,
so these views answer nothing without it: not even in a DEBUG start-up (where ``/internal/metrics``
may be open), because the header alone would let anyone act as any tenant. Answers and errors are
OpenAI's shapes (``batches.objects``, ``batches.errors``).
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from batches import files, storage, submission
from batches.errors import ApiError
from batches.objects import batch_object, file_object, list_object
from tenants.constants import TenantStatus
from tenants.models import Tenant

logger = logging.getLogger(__name__)

JSONL = "application/jsonl"
# Multipart framing around the file: a body longer than the limit by more than this is refused
# before it is parsed.
MULTIPART_OVERHEAD = 64 * 1024


def _error(exc: ApiError) -> JsonResponse:
    return JsonResponse(exc.body(), status=exc.status)


def _authorized(request: HttpRequest) -> bool:
    token = settings.INTERNAL_TOKEN
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def _tenant(request: HttpRequest) -> Tenant:
    raw = request.headers.get("X-Berth-Tenant", "")
    try:
        tenant_id = uuid.UUID(raw)
    except ValueError:
        raise ApiError(401, "X-Berth-Tenant must name a tenant.", code="invalid_tenant") from None
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise ApiError(401, "X-Berth-Tenant must name a tenant.", code="invalid_tenant")
    if tenant.status != TenantStatus.ACTIVE:
        raise ApiError(
            403,
            "Your organization is suspended. Contact the operator of this Berth deployment.",
            type="permission_error",
            code="organization_suspended",
        )
    return tenant


def _key_id(request: HttpRequest) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.headers.get("X-Berth-Key", ""))
    except ValueError:
        return None


def internal_api(methods: dict[str, Callable[..., HttpResponse]]) -> Callable[..., HttpResponse]:
    """A view that checks the token, resolves the tenant and dispatches on the method."""

    @csrf_exempt
    @never_cache
    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        if not _authorized(request):
            if not settings.INTERNAL_TOKEN:
                return _error(
                    ApiError(
                        503,
                        "The Files and Batch APIs need BERTH_INTERNAL_TOKEN set on the control plane "
                        "and the gateway.",
                        type="server_error",
                        code="internal_token_unset",
                    )
                )
            return _error(ApiError(401, "The internal token is missing or wrong.", code="invalid_token"))
        handler = methods.get(request.method or "")
        try:
            if handler is None:
                raise ApiError(
                    405,
                    f"Method {request.method} is not allowed on {request.path}.",
                    code="method_not_allowed",
                )
            return handler(request, _tenant(request), **kwargs)
        except ApiError as exc:
            return _error(exc)

    return view


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


# --------------------------------------------------------------------------- files


def _upload(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > settings.FILES_MAX_BYTES + MULTIPART_OVERHEAD:
        raise files._too_large(length)
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(
            400,
            "Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
            code="invalid_request",
        )
    try:
        upload = request.FILES.get("file")
        purpose = request.POST.get("purpose")
    except (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent) as exc:
        raise ApiError(400, f"The multipart body could not be read: {exc}", code="invalid_request") from None
    files.check_purpose(purpose)
    if upload is None:
        raise ApiError(
            400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    file = files.upload_file(
        tenant=tenant,
        purpose=purpose,
        content=upload.file,
        size=upload.size or 0,
        filename=upload.name or "",
        api_key_id=_key_id(request),
    )
    return JsonResponse(file_object(file))


def _list_files(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    rows, has_more = files.list_files(
        tenant=tenant,
        purpose=request.GET.get("purpose"),
        limit=request.GET.get("limit"),
        after=request.GET.get("after"),
        order=request.GET.get("order"),
    )
    return JsonResponse(list_object([file_object(f) for f in rows], has_more=has_more))


def _retrieve_file(request: HttpRequest, tenant: Tenant, file_id: str) -> HttpResponse:
    return JsonResponse(file_object(files.get_file(tenant=tenant, file_id=file_id)))


def _delete_file(request: HttpRequest, tenant: Tenant, file_id: str) -> HttpResponse:
    file = files.delete_file(tenant=tenant, file_id=file_id)
    return JsonResponse({"id": file.id, "object": "file", "deleted": True})


def file_content_response(file: Any) -> HttpResponse:
    """The raw bytes (streamed from storage), as a JSONL download named like the file."""
    try:
        handle = storage.open_file(file.storage_name)
    except FileNotFoundError:
        logger.error("the bytes of %s (%s) are missing from storage", file.id, file.storage_name)
        raise ApiError(
            500,
            f"The content of file {file.id} is missing from storage.",
            type="server_error",
            code="file_missing",
        ) from None
    response = FileResponse(handle, content_type=JSONL, as_attachment=True, filename=file.filename)
    response["Content-Length"] = str(file.bytes)
    return response


def _file_content(request: HttpRequest, tenant: Tenant, file_id: str) -> HttpResponse:
    return file_content_response(files.get_file(tenant=tenant, file_id=file_id))


# --------------------------------------------------------------------------- batches


def _create_batch(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    body = _json_body(request)
    batch = submission.create_batch(
        tenant=tenant,
        input_file_id=body.get("input_file_id"),
        endpoint=body.get("endpoint"),
        completion_window=body.get("completion_window"),
        metadata=body.get("metadata"),
        api_key_id=_key_id(request),
    )
    return JsonResponse(batch_object(batch))


def _list_batches(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    rows, has_more = submission.list_batches(
        tenant=tenant, limit=request.GET.get("limit"), after=request.GET.get("after")
    )
    return JsonResponse(list_object([batch_object(b) for b in rows], has_more=has_more))


def _retrieve_batch(request: HttpRequest, tenant: Tenant, batch_id: str) -> HttpResponse:
    return JsonResponse(batch_object(submission.get_batch(tenant=tenant, batch_id=batch_id)))


def _cancel_batch(request: HttpRequest, tenant: Tenant, batch_id: str) -> HttpResponse:
    return JsonResponse(batch_object(submission.cancel_batch(tenant=tenant, batch_id=batch_id)))


def _unknown(request: HttpRequest, tenant: Tenant, rest: str = "") -> HttpResponse:
    raise ApiError(404, f"Unknown request URL: {request.method} /v1/{rest}.", code="unknown_url")


ANY = ("GET", "POST", "DELETE", "PUT", "PATCH")

files_collection = internal_api({"GET": _list_files, "POST": _upload})
file_detail = internal_api({"GET": _retrieve_file, "DELETE": _delete_file})
file_content = internal_api({"GET": _file_content})
batches_collection = internal_api({"GET": _list_batches, "POST": _create_batch})
batch_detail = internal_api({"GET": _retrieve_batch})
batch_cancel = internal_api({"POST": _cancel_batch})
unknown = internal_api(dict.fromkeys(ANY, _unknown))
