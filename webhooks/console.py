"""Console: the Webhooks page — endpoints, their signing secret (shown once), a delivery log.

Owners and admins (``manage_settings``) only, as in the API: where billing data is sent is theirs
to decide. Every change goes through ``webhooks.endpoints`` (validated, audited).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render

from console.access import NoTenant, tenant_required
from tenants.constants import PERM_MANAGE_SETTINGS
from webhooks import endpoints, events
from webhooks.constants import SUBSCRIBABLE
from webhooks.models import WebhookEndpoint

DENIED = "Only owners and admins can manage webhooks."
LOG_ROWS = 50

page_guard = tenant_required(perm=PERM_MANAGE_SETTINGS, denied=DENIED)
action_guard = tenant_required(
    perm=PERM_MANAGE_SETTINGS, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"]
)


class EndpointForm(forms.Form):
    url = forms.URLField(max_length=500, label="URL", assume_scheme="https")
    description = forms.CharField(max_length=200, required=False)
    events = forms.MultipleChoiceField(
        choices=[(str(c), c.label) for c in SUBSCRIBABLE], widget=forms.CheckboxSelectMultiple
    )
    enabled = forms.BooleanField(required=False, initial=True)


def _save(form: EndpointForm, save) -> WebhookEndpoint | None:
    """Run ``save(**cleaned_data)``; the service's validation errors land on the form."""
    try:
        return save(**form.cleaned_data)
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            form.add_error(None, exc.messages)
        return None


@page_guard
def webhooks_page(request, tenant):
    form = EndpointForm(request.POST or None, initial={"enabled": True})
    status, secret, created = 200, None, None
    if request.method == "POST":
        if form.is_valid():
            created = _save(
                form,
                lambda **data: endpoints.create(tenant=tenant, user=request.user, request=request, **data),
            )
        if created is not None:
            secret, form = created.secret, EndpointForm(initial={"enabled": True})
        else:
            status = 400
    context = {
        "endpoints": WebhookEndpoint.objects.for_tenant(tenant),
        "form": form,
        "secret": secret,
        "created": created,
    }
    return render(request, "console/webhooks.html", context, status=status)


@tenant_required(perm=PERM_MANAGE_SETTINGS, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND)
def webhook_page(request, tenant, endpoint_id):
    endpoint = get_object_or_404(WebhookEndpoint.objects.for_tenant(tenant), pk=endpoint_id)
    initial = {f: getattr(endpoint, f) for f in ("url", "description", "events", "enabled")}
    form = EndpointForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        saved = None
        if form.is_valid():
            saved = _save(
                form,
                lambda **data: endpoints.update(
                    endpoint=endpoint, user=request.user, request=request, **data
                ),
            )
        if saved is not None:
            messages.success(request, "Endpoint saved.")
            return redirect("console:webhook", endpoint_id=endpoint.pk)
        status = 400
    deliveries = (
        endpoint.deliveries.select_related("event")
        .prefetch_related("attempt_log")
        .order_by("-created_at")[:LOG_ROWS]
    )
    context = {"endpoint": endpoint, "form": form, "deliveries": deliveries, "secret": None}
    return render(request, "console/webhook.html", context, status=status)


@action_guard
def send_test(request, tenant, endpoint_id):
    endpoint = get_object_or_404(WebhookEndpoint.objects.for_tenant(tenant), pk=endpoint_id)
    if not endpoint.enabled:
        messages.error(request, "The endpoint is disabled: enable it to send a test event.")
    else:
        event = events.send_test(endpoint=endpoint)
        messages.success(request, f"Test event {event.id} queued; its delivery appears below.")
    return redirect("console:webhook", endpoint_id=endpoint.pk)


@action_guard
def rotate_secret(request, tenant, endpoint_id):
    endpoint = get_object_or_404(WebhookEndpoint.objects.for_tenant(tenant), pk=endpoint_id)
    endpoints.rotate_secret(endpoint=endpoint, user=request.user, request=request)
    form = EndpointForm(
        initial={f: getattr(endpoint, f) for f in ("url", "description", "events", "enabled")}
    )
    deliveries = endpoint.deliveries.select_related("event").prefetch_related("attempt_log")[:LOG_ROWS]
    context = {"endpoint": endpoint, "form": form, "deliveries": deliveries, "secret": endpoint.secret}
    return render(request, "console/webhook.html", context)


@action_guard
def delete_webhook(request, tenant, endpoint_id):
    endpoint = get_object_or_404(WebhookEndpoint.objects.for_tenant(tenant), pk=endpoint_id)
    endpoints.delete(endpoint=endpoint, user=request.user, request=request)
    messages.success(request, "Endpoint deleted.")
    return redirect("console:webhooks")
