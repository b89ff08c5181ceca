from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api.views import InvoiceViewSet, UsageView

router = SimpleRouter()
router.trailing_slash = "/?"  # the constructor only takes "/" or "": accept both spellings
router.register("invoices", InvoiceViewSet, basename="invoice")

urlpatterns = [
    path("usage", UsageView.as_view(), name="usage"),
    path("usage/", UsageView.as_view()),
    *router.urls,
]
