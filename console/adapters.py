"""Console: the tenant's LoRA adapters (list, register, delete).

Every member sees the list (an adapter is called like a model, so members need its name);
registering and deleting need ``manage_settings`` (owners and admins), as on ``/api/v1/adapters``.
The checks and the fetch are ``models_registry.adapters``'s: errors come back next to the field.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render

from console.access import NoTenant, forbidden, tenant_required
from models_registry import adapters
from models_registry.constants import ADAPTER_BASE_TASKS
from models_registry.models import LoraAdapter, Model
from tenants.constants import PERM_MANAGE_SETTINGS
from tenants.permissions import allows

DENIED = "Only owners and admins can add or delete adapters."


class AdapterForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="Lower-case letters, digits, '.', '_' and '-'. Clients call it as <organization>/<name>.",
    )
    base_model = forms.ChoiceField(label="Base model", help_text="The model the adapter was trained on.")
    source = forms.CharField(
        label="Source",
        max_length=500,
        help_text="A Hugging Face repo id (owner/name), a folder on the server or an https:// URL of a folder.",
    )
    revision = forms.CharField(
        label="Revision", max_length=100, required=False, help_text="Hub only: a branch, tag or commit."
    )

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        bases = Model.objects.visible_to(tenant).filter(task__in=ADAPTER_BASE_TASKS).order_by("name")
        self.fields["base_model"].choices = [("", "Choose a model"), *((m.name, m.name) for m in bases)]


@tenant_required(if_no_tenant=NoTenant.OVERVIEW)
def adapters_page(request, tenant):
    can_manage = allows(request.user, tenant, PERM_MANAGE_SETTINGS)
    form = AdapterForm(request.POST or None, tenant=tenant)
    if request.method == "POST":
        if not can_manage:
            return forbidden(request, DENIED)
        if form.is_valid():
            try:
                adapter = adapters.create_adapter(tenant=tenant, **form.cleaned_data)
            except adapters.AdapterError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                if adapter.status == "ready":
                    messages.success(request, f"{adapter.served_name} is ready to call.")
                else:
                    messages.info(
                        request, f"{adapter.served_name} is being fetched and checked; reload to see."
                    )
                return redirect("console:adapters")
    plan = tenant.plan
    listed = LoraAdapter.objects.of_tenant(tenant).select_related("base_model").order_by("name")
    context = {
        "form": form,
        "can_manage": can_manage,
        "adapters": [(adapter, adapter.current_price()) for adapter in listed],
        "plan": plan,
        "count": len(listed),
    }
    return render(request, "console/adapters.html", context)


@tenant_required(perm=PERM_MANAGE_SETTINGS, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"])
def delete_adapter(request, tenant, adapter_id):
    adapter = get_object_or_404(LoraAdapter.objects.of_tenant(tenant), pk=adapter_id)
    adapters.delete_adapter(adapter=adapter)
    messages.success(request, f"Deleted {adapter.served_name}.")
    return redirect("console:adapters")
