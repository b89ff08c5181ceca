"""The management API under ``/api/v1/``: each app contributes its own ``api/urls.py``.

Also what the OpenAPI schema (``/api/schema/``) says about the API as a whole, which no single
view can: the management-key scheme and the errors every operation may answer. Clients and
schemathesis (``tests/security/test_api_schema.py``) check answers against it, so an error the
schema did not list would be a broken contract.
"""

from django.urls import include, path
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from audit.api import AuditEntryList
from economics.api import EconomicsView

urlpatterns = [
    path("", include("tenants.api.urls")),
    path("", include("models_registry.api.urls")),
    path("", include("billing.api.urls")),
    path("audit", AuditEntryList.as_view(), name="audit"),
    path("audit/", AuditEntryList.as_view()),
    path("", include("guardrails.api.urls")),
    path("staff/economics", EconomicsView.as_view(), name="staff-economics"),
    path("staff/economics/", EconomicsView.as_view()),
    path("", include("webhooks.api.urls")),
    path("", include("batches.api.urls")),
]


class ManagementKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer mk-berth-…`` in the schema (drf-spectacular cannot guess it)."""

    target_class = "tenants.api.authentication.ManagementKeyAuthentication"
    name = "managementKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A management key, `mk-berth-<lookup id>_<secret>`, acting as its creator.",
        }


ERROR_SCHEMA = {
    "type": "object",
    "description": "DRF's error body: `detail` for a refusal, one list of messages per field for bad input.",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": {
        "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}, {"type": "object"}]
    },
}
ERRORS = {
    "400": "Invalid input (fields, query parameters or body).",
    "401": "No credentials, or an invalid, revoked or expired management key.",
    "403": "Not a member of an organization, or the role lacks the permission.",
    "404": "No such object in the current organization (other organizations' objects included).",
}
WRITE_METHODS = ("post", "put", "patch")


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: add the error answers each operation can give."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for route, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            parameters = operation.get("parameters", [])
            codes = ["401", "403"]
            if "{" in route:
                codes.append("404")
            if method in WRITE_METHODS or any(p.get("in") == "query" for p in parameters):
                codes.append("400")
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, {"description": ERRORS[code], "content": reference})
    return result
