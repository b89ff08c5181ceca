"""Messages on the ``invalidate`` channel: the control plane says what changed, gateways forget it.

A message is ``<kind>:<ident>``. The builders below are the only way the control plane spells one,
and ``parse`` is the only way a gateway reads one. A message ``parse`` does not know reads as
``Unknown``: the gateway then drops every cached entry, the safe reaction to a newer writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    API_KEY = "apikey"  # ident: the key's lookup id
    TENANT = "tenant"  # ident: the tenant id
    MODEL = "model"  # ident: the public model name
    ROUTE = "route"  # ident: the public model name
    GUARDRAILS = "guardrails"  # ident: the tenant id


@dataclass(frozen=True)
class Invalidation:
    kind: Kind
    ident: str


@dataclass(frozen=True)
class Unknown:
    raw: str


def _message(kind: Kind, ident: object) -> str:
    return f"{kind.value}:{ident}"


def api_key(lookup_id: str) -> str:
    return _message(Kind.API_KEY, lookup_id)


def tenant(tenant_id: object) -> str:
    return _message(Kind.TENANT, tenant_id)


def model(name: str) -> str:
    return _message(Kind.MODEL, name)


def route(model_name: str) -> str:
    return _message(Kind.ROUTE, model_name)


def guardrails(tenant_id: object) -> str:
    return _message(Kind.GUARDRAILS, tenant_id)


def parse(message: str | bytes) -> Invalidation | Unknown:
    text = message.decode() if isinstance(message, bytes) else message
    kind, sep, ident = text.partition(":")
    try:
        known = Kind(kind)
    except ValueError:
        return Unknown(text)
    if not sep:
        return Unknown(text)
    return Invalidation(known, ident)
