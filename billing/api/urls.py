from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api.views import InvoiceViewSet, UsageRecordList, UsageView

router = SimpleRouter()
router.trailing_slash = "/?"  # the constructor only takes "/" or "": accept both spellings
router.register("invoices", InvoiceViewSet, basename="invoice")

urlpatterns = [
    path("usage", UsageView.as_view(), name="usage"),
    path("usage/", UsageView.as_view()),
    path("usage/requests", UsageRecordList.as_view(), name="usage-requests"),
    path("usage/requests/", UsageRecordList.as_view()),
    *router.urls,
]
