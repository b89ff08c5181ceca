"""The management API under ``/api/v1/``: each app contributes its own ``api/urls.py``."""

from django.urls import include, path

urlpatterns = [
    path("", include("tenants.api.urls")),
    path("", include("models_registry.api.urls")),
    path("", include("billing.api.urls")),
]
