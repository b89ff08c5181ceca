"""Top-level URLs: console, admin, management API (``/api/v1``), schema and health."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from berth.health import healthz
from console import views as console_views
from provisioning import observability

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("internal/prometheus/engines", observability.engine_targets, name="prometheus-engines"),
    path("internal/metrics", observability.pool_metrics, name="pool-metrics"),
    path("internal/v1/", include("batches.urls")),
    path("admin/login/", console_views.admin_login),  # throttled, then Django's admin login
    path("admin/", admin.site.urls),
    path("staff/", include("staff.urls")),
    path("api/v1/", include("berth.api_router")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("accounts/", include("console.account_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("billing/", include("billing.urls")),
    path("", include("console.urls")),
]

handler404 = "berth.not_found.page_not_found"
