from django.urls import path
from rest_framework.routers import SimpleRouter

from tenants.api.views import ApiKeyViewSet, CurrentTenantView, InvitationViewSet, MemberViewSet

router = SimpleRouter()
router.trailing_slash = "/?"  # the constructor only takes "/" or "": accept both spellings
router.register("members", MemberViewSet, basename="member")
router.register("keys", ApiKeyViewSet, basename="apikey")
router.register("invitations", InvitationViewSet, basename="invitation")

urlpatterns = [
    path("tenant", CurrentTenantView.as_view(), name="tenant"),
    path("tenant/", CurrentTenantView.as_view()),
    *router.urls,
]
