from django.urls import path
from rest_framework.routers import SimpleRouter

from guardrails.api.views import ContentGovernanceView, GuardrailPolicyViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("guardrails", GuardrailPolicyViewSet, basename="guardrail")

urlpatterns = [
    path("content-governance", ContentGovernanceView.as_view(), name="content-governance"),
    path("content-governance/", ContentGovernanceView.as_view()),
    *router.urls,
]
