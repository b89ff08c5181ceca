"""Guardrails and content governance: tenants' content policies and what may be logged of content.

The control-plane half of issue 17's guardrails: policies (``GuardrailPolicy``), a tenant's
content settings (``ContentGovernance``) and the stored content log (``ContentLog``), mirrored to
Redis for the gateway, which applies them (``gateway/guardrails.py``).
"""
