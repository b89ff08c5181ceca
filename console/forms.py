"""Console forms: signup and API key creation."""

from __future__ import annotations

from django import forms
from django.contrib.auth import password_validation
from django.utils import timezone

from billing import reports
from billing.models import BillingAccount
from tenants.constants import Role
from tenants.models import Tenant, User


class SignupForm(forms.Form):
    email = forms.EmailField(label="Work email", widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    organization = forms.CharField(
        label="Organization name",
        max_length=120,
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

    def clean_email(self):
        # No "already exists" error: the answer must not tell whether an address has an account.
        return self.cleaned_data["email"].strip().lower()

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password:
            try:
                password_validation.validate_password(password, User(email=cleaned.get("email", "")))
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label="Name", max_length=100, help_text="What the key is for, e.g. “prod backend”."
    )
    allowed_models = forms.CharField(
        label="Allowed models",
        required=False,
        help_text="Comma-separated model names. Leave empty to allow every model your organization may use.",
    )
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. Leave empty for a key that does not expire.",
    )

    def clean_allowed_models(self):
        raw = self.cleaned_data["allowed_models"]
        return [name.strip() for name in raw.split(",") if name.strip()]

    def clean_expires_at(self):
        value = self.cleaned_data["expires_at"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email address")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)


class AcceptSignupForm(forms.Form):
    """Creates the invited person's account; the email is fixed by the invitation."""

    password = forms.CharField(
        label="Choose a password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email

    def clean_password(self):
        password = self.cleaned_data["password"]
        password_validation.validate_password(password, User(email=self.email))
        return password


class UsageRangeForm(forms.Form):
    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "The end date must be on or after the start date.")
            elif (end - start).days + 1 > reports.MAX_RANGE_DAYS:
                self.add_error(
                    "start", f"Choose at most {reports.MAX_RANGE_DAYS} days; export longer ranges in parts."
                )
        return cleaned


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["name"]
        labels = {"name": "Organization name"}


ALERT_CHOICES = [(50, "50 %"), (80, "80 %"), (100, "100 % (requests are refused from here)")]


class BillingSettingsForm(forms.ModelForm):
    alert_thresholds = forms.TypedMultipleChoiceField(
        label="Email alerts when spend reaches",
        choices=ALERT_CHOICES,
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Owners and billing members (and the billing email) get one email per threshold each month.",
    )

    class Meta:
        model = BillingAccount
        fields = ["spend_limit", "alert_thresholds", "billing_email"]
        labels = {"spend_limit": "Monthly spend limit (USD)", "billing_email": "Billing email"}

    def __init__(self, *args, plan=None, **kwargs):
        super().__init__(*args, **kwargs)
        default = plan.monthly_spend_limit if plan is not None else None
        plan_text = f"the {plan.name} plan's {default}" if default is not None else "no limit"
        self.fields["spend_limit"].help_text = (
            f"Leave empty for {plan_text}. At the limit the API answers 429 insufficient_quota until "
            "you raise it or the month ends."
        )
        self.fields["spend_limit"].widget.attrs.update({"min": "0", "step": "0.01", "inputmode": "decimal"})
        self.fields["billing_email"].help_text = "Also receives invoices and alerts (optional)."
        self.initial.setdefault("alert_thresholds", list(self.instance.alert_thresholds or []))


class ResidencyForm(forms.Form):
    """An owner's data-residency requirement, among the labels the operator gave nodes."""

    data_residency = forms.ChoiceField(
        label="Run our private models only on nodes in",
        required=False,
        help_text="New replicas start only on nodes with this label; running ones on other nodes are "
        "moved. Public models are shared and run anywhere.",
    )

    def __init__(self, *args, labels: list[str], current: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        choices = sorted({*labels, *([current] if current else [])})
        self.fields["data_residency"].choices = [("", "Any node (no requirement)")] + [
            (c, c) for c in choices
        ]
        self.initial.setdefault("data_residency", current)
