"""Console: the Guardrails page — the organization's content policies and its content settings.

Every member sees what screens their requests; owners and admins (``manage_settings``) create,
change and delete policies and decide whether request content is logged. Changes go through
``guardrails.policies`` (validated, mirrored to the gateway after the commit) like the API's.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render

from console.access import NoTenant, forbidden, tenant_required
from guardrails import policies
from guardrails.models import DETECTORS, Action, ContentGovernance, GuardrailPolicy
from tenants.constants import PERM_MANAGE_SETTINGS
from tenants.models import ApiKey
from tenants.permissions import allows

DETECTOR_LABELS = {
    "email": "E-mail addresses",
    "phone": "Phone numbers",
    "card": "Card numbers (Luhn-checked)",
    "iban": "IBANs (mod-97-checked)",
    "secret": "Secrets (sk-…, berth_…, AKIA…, ghp_…, bearer tokens)",
}
OFF = ""
DETECTOR_CHOICES = [(OFF, "Off"), *Action.choices]
DENIED = "Only owners and admins can change guardrails."

manager_required = tenant_required(
    perm=PERM_MANAGE_SETTINGS, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND, methods=["POST"]
)


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


class PolicyForm(forms.Form):
    name = forms.CharField(max_length=100)
    enabled = forms.BooleanField(required=False, initial=True)
    api_key = forms.ModelChoiceField(
        queryset=ApiKey.objects.none(),
        required=False,
        empty_label="Every key of the organization",
        label="API key",
    )
    applies_to_prompts = forms.BooleanField(required=False, initial=True, label="Screen prompts")
    applies_to_completions = forms.BooleanField(required=False, label="Screen completions")
    blocked_terms = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="One per line; whole words, any case.",
    )
    blocked_terms_action = forms.ChoiceField(choices=Action.choices, initial=Action.BLOCK)
    max_prompt_chars = forms.IntegerField(
        min_value=1, required=False, label="Maximum prompt size (characters)"
    )
    max_prompt_action = forms.ChoiceField(
        choices=Action.choices, initial=Action.BLOCK, label="Over-size action"
    )
    screen_model = forms.CharField(
        max_length=200,
        required=False,
        help_text="An embedding model, e.g. all-minilm-l6-v2; empty: no screen.",
    )
    screen_examples = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="Example phrases, one per line."
    )
    screen_threshold = forms.FloatField(min_value=-1, max_value=1, initial=0.8)
    screen_action = forms.ChoiceField(choices=Action.choices, initial=Action.BLOCK)
    screen_timeout_ms = forms.IntegerField(
        min_value=10, max_value=10_000, initial=500, label="Screen timeout (ms)"
    )
    screen_fail_open = forms.BooleanField(
        required=False, initial=True, label="Let requests through if the screen is slow"
    )

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["api_key"].queryset = ApiKey.objects.for_tenant(tenant).usable()
        for name in DETECTORS:
            self.fields[f"detector_{name}"] = forms.ChoiceField(
                choices=DETECTOR_CHOICES, required=False, label=DETECTOR_LABELS[name]
            )
        # What most policies are about first: the detectors, then terms, size and the screen.
        first = ["name", "enabled", "api_key", "applies_to_prompts", "applies_to_completions"]
        self.order_fields(first + [f"detector_{name}" for name in DETECTORS])

    @classmethod
    def initial_of(cls, policy: GuardrailPolicy) -> dict:
        initial = {
            field: getattr(policy, field)
            for field in (
                "name", "enabled", "applies_to_prompts", "applies_to_completions", "blocked_terms_action",
                "max_prompt_chars", "max_prompt_action", "screen_model", "screen_threshold",
                "screen_action", "screen_timeout_ms", "screen_fail_open",
            )
        }  # fmt: skip
        initial["api_key"] = policy.api_key_id
        initial["blocked_terms"] = "\n".join(policy.blocked_terms)
        initial["screen_examples"] = "\n".join(policy.screen_examples)
        for name in DETECTORS:
            initial[f"detector_{name}"] = policy.detectors.get(name, OFF)
        return initial

    def policy_fields(self) -> dict:
        data = dict(self.cleaned_data)
        detectors = {name: data.pop(f"detector_{name}") for name in DETECTORS}
        data["detectors"] = {name: action for name, action in detectors.items() if action}
        data["blocked_terms"] = _lines(data["blocked_terms"])
        data["screen_examples"] = _lines(data["screen_examples"])
        return data

    def detector_fields(self):
        return [self[f"detector_{name}"] for name in DETECTORS]


class ContentForm(forms.ModelForm):
    class Meta:
        model = ContentGovernance
        fields = ["log_content", "content_retention_days"]
        labels = {
            "log_content": "Log request content",
            "content_retention_days": "Keep logged content (days)",
        }


def _save_policy(form: PolicyForm, tenant, user, policy: GuardrailPolicy | None) -> GuardrailPolicy | None:
    try:
        if policy is None:
            return policies.create_policy(tenant=tenant, created_by=user, **form.policy_fields())
        return policies.update_policy(policy=policy, **form.policy_fields())
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return None


@tenant_required(if_no_tenant=NoTenant.PAGE)
def guardrails_page(request, tenant):
    can_manage = allows(request.user, tenant, PERM_MANAGE_SETTINGS)
    which = request.POST.get("form") if request.method == "POST" else None
    if which and not can_manage:
        return forbidden(request, DENIED)
    policy_form = PolicyForm(request.POST if which == "policy" else None, tenant=tenant, prefix="policy")
    governance = policies.governance_of(tenant)
    content_form = ContentForm(
        request.POST if which == "content" else None, instance=governance, prefix="content"
    )
    status = 200
    if which == "policy":
        if policy_form.is_valid() and _save_policy(policy_form, tenant, request.user, None):
            messages.success(request, "Policy created. The gateway applies it within seconds.")
            return redirect("console:guardrails")
        status = 400
    elif which == "content":
        if content_form.is_valid():
            policies.set_governance(tenant=tenant, **content_form.cleaned_data)
            messages.success(request, "Content settings saved.")
            return redirect("console:guardrails")
        status = 400
    context = {
        "policies": GuardrailPolicy.objects.for_tenant(tenant).select_related("api_key"),
        "defaults": GuardrailPolicy.objects.defaults().filter(enabled=True),
        "policy_form": policy_form,
        "content_form": content_form,
        "governance": governance,
        "can_manage": can_manage,
        "detector_labels": DETECTOR_LABELS,
    }
    return render(request, "console/guardrails.html", context, status=status)


@tenant_required(if_no_tenant=NoTenant.NOT_FOUND)
def guardrail_policy(request, tenant, policy_id):
    policy = get_object_or_404(GuardrailPolicy.objects.for_tenant(tenant), pk=policy_id)
    can_manage = allows(request.user, tenant, PERM_MANAGE_SETTINGS)
    if request.method == "POST" and not can_manage:
        return forbidden(request, DENIED)
    form = PolicyForm(
        request.POST if request.method == "POST" else None,
        tenant=tenant,
        prefix="policy",
        initial=PolicyForm.initial_of(policy),
    )
    if request.method == "POST":
        if form.is_valid() and _save_policy(form, tenant, request.user, policy):
            messages.success(request, f"Policy “{policy.name}” saved.")
            return redirect("console:guardrails")
        return render(
            request,
            "console/guardrail_policy.html",
            {"form": form, "policy": policy, "can_manage": True},
            status=400,
        )
    return render(
        request, "console/guardrail_policy.html", {"form": form, "policy": policy, "can_manage": can_manage}
    )


@manager_required
def delete_guardrail_policy(request, tenant, policy_id):
    policy = get_object_or_404(GuardrailPolicy.objects.for_tenant(tenant), pk=policy_id)
    name = policy.name
    with transaction.atomic():
        policies.delete_policy(policy=policy)
    messages.success(request, f"Policy “{name}” deleted.")
    return redirect("console:guardrails")
