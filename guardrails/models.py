"""Guardrail policies, a tenant's content settings, and the content log.

A policy belongs to a tenant (and optionally to one of its API keys) or, with no tenant, is a
platform default set by staff: the defaults apply to every tenant that has no tenant-wide policy
of its own. The field names and actions are what the gateway reads (``gateway/guardrails.py``).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

DETECTORS = ("email", "phone", "card", "iban", "secret")


class Action(models.TextChoices):
    REDACT = "redact", "Redact (replace with a label such as [EMAIL])"
    BLOCK = "block", "Block (refuse with a 400)"
    FLAG = "flag", "Flag (let through, record an audit event)"


class GuardrailPolicyQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> GuardrailPolicyQuerySet:
        return self.filter(tenant=tenant)

    def defaults(self) -> GuardrailPolicyQuerySet:
        return self.filter(tenant__isnull=True)


class GuardrailPolicy(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="guardrail_policies",
        help_text="Empty: a platform default (staff only), in force for tenants without their own.",
    )
    api_key = models.ForeignKey(
        "tenants.ApiKey",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="guardrail_policies",
        help_text="Only this key's requests; empty: every key of the tenant.",
    )
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    applies_to_prompts = models.BooleanField(default=True)
    applies_to_completions = models.BooleanField(default=False)
    detectors = models.JSONField(
        default=dict, blank=True, help_text='Detector → action, e.g. {"email": "redact", "card": "block"}.'
    )
    blocked_terms = models.JSONField(default=list, blank=True)
    blocked_terms_action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    max_prompt_chars = models.PositiveIntegerField(null=True, blank=True)
    max_prompt_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Estimated at four characters per token."
    )
    max_prompt_action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    screen_model = models.CharField(
        max_length=200, blank=True, help_text="An embedding model served by Berth; empty: no screen."
    )
    screen_examples = models.JSONField(default=list, blank=True)
    screen_threshold = models.FloatField(
        default=0.8, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)]
    )
    screen_action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    screen_timeout_ms = models.PositiveIntegerField(
        default=500, validators=[MinValueValidator(10), MaxValueValidator(10_000)]
    )
    screen_fail_open = models.BooleanField(
        default=True, help_text="When the screen does not answer in time: let the request through."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = GuardrailPolicyQuerySet.as_manager()

    class Meta:
        ordering = ["name", "created_at"]
        verbose_name = "guardrail policy"
        verbose_name_plural = "guardrail policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.detectors, dict):
            errors["detectors"] = "A mapping of detector to action."
        else:
            for name, action in self.detectors.items():
                if name not in DETECTORS:
                    errors["detectors"] = f"Unknown detector {name!r}: use {', '.join(DETECTORS)}."
                elif action not in Action.values:
                    errors["detectors"] = (
                        f"Unknown action {action!r} for {name}: use {', '.join(Action.values)}."
                    )
        if not isinstance(self.blocked_terms, list) or not all(
            isinstance(term, str) and term.strip() and len(term) <= 200 for term in self.blocked_terms
        ):
            errors["blocked_terms"] = "A list of non-empty terms of at most 200 characters."
        elif len(self.blocked_terms) > 500:
            errors["blocked_terms"] = "At most 500 terms."
        if not isinstance(self.screen_examples, list) or not all(
            isinstance(example, str) and example.strip() for example in self.screen_examples
        ):
            errors["screen_examples"] = "A list of example phrases."
        elif len(self.screen_examples) > 100:
            errors["screen_examples"] = "At most 100 example phrases."
        elif self.screen_model and not self.screen_examples:
            errors["screen_examples"] = "A screen needs at least one example phrase."
        if not (self.applies_to_prompts or self.applies_to_completions):
            errors["applies_to_prompts"] = "A policy applies to prompts, completions or both."
        if self.api_key is not None and self.api_key.tenant_id != self.tenant_id:
            errors["api_key"] = "The key belongs to another organization."
        if errors:
            raise ValidationError(errors)

    def entry(self) -> dict:
        """What the gateway reads (``gateway.guardrails.compile_policies``)."""
        screen = None
        if self.screen_model and self.screen_examples:
            screen = {
                "model": self.screen_model,
                "examples": list(self.screen_examples),
                "threshold": self.screen_threshold,
                "action": self.screen_action,
                "timeout_ms": self.screen_timeout_ms,
                "fail_open": self.screen_fail_open,
            }
        return {
            "id": str(self.id),
            "name": self.name,
            "enabled": self.enabled,
            "key_id": str(self.api_key_id) if self.api_key_id else None,
            "prompts": self.applies_to_prompts,
            "completions": self.applies_to_completions,
            "detectors": dict(self.detectors),
            "blocked_terms": list(self.blocked_terms),
            "blocked_terms_action": self.blocked_terms_action,
            "max_prompt_chars": self.max_prompt_chars,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_prompt_action": self.max_prompt_action,
            "screen": screen,
        }


class ContentGovernance(models.Model):
    """Whether the gateway may log a tenant's request content, and for how long it is kept."""

    tenant = models.OneToOneField(
        "tenants.Tenant", primary_key=True, on_delete=models.CASCADE, related_name="content_governance"
    )
    log_content = models.BooleanField(
        default=False, help_text="Store prompts and answers (after redaction) in the content log."
    )
    content_retention_days = models.PositiveSmallIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(3650)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"content governance of {self.tenant}"


class ContentLog(models.Model):
    """One request's content as the gateway logged it (only for tenants with ``log_content``)."""

    request_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="content_logs")
    key_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32)
    status = models.CharField(max_length=32, blank=True)
    http_status = models.PositiveSmallIntegerField(default=0)
    prompt = models.TextField(blank=True)
    completion = models.TextField(blank=True)
    occurred_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [models.Index(fields=["tenant", "occurred_at"])]

    def __str__(self) -> str:
        return self.request_id
