from django.urls import path
from rest_framework.routers import SimpleRouter

from tenants.api.views import ApiKeyViewSet, CurrentTenantView, MemberViewSet

router = SimpleRouter(trailing_slash="/?")
router.register("members", MemberViewSet, basename="member")
router.register("keys", ApiKeyViewSet, basename="apikey")

urlpatterns = [
    path("tenant", CurrentTenantView.as_view(), name="tenant"),
    path("tenant/", CurrentTenantView.as_view()),
    *router.urls,
]
