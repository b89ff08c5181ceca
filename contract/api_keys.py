"""API keys as both sides see them: the format, its parser, the HMAC, and the peppers.

A key reads ``<prefix><lookup id>_<secret>``: ``sk-berth-`` for inference keys (the gateway),
``mk-berth-`` for management keys (the control plane's API); a 12-character base62 lookup id,
stored in clear to find the key; a 43-character base62 secret (≈256 bits), stored only as
HMAC-SHA256(pepper, secret) with the pepper's id, so peppers can be rotated and a database leak
alone yields no usable key.

``BERTH_KEY_PEPPERS`` holds ``id:secret`` pairs, comma-separated; the first signs new keys, the
others still verify older ones. ``parse_peppers`` is the one validation both the control plane
and the gateway apply to it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

INFERENCE = "inference"
MANAGEMENT = "management"
KEY_PREFIXES: dict[str, str] = {INFERENCE: "sk-berth-", MANAGEMENT: "mk-berth-"}
LOOKUP_LENGTH = 12
SECRET_LENGTH = 43
ALPHABET = string.ascii_letters + string.digits
MIN_PEPPER_LENGTH = 32
# Hashed in place of a malformed key's secret, so a malformed key costs the same HMAC.
DUMMY_SECRET = "x" * SECRET_LENGTH


@dataclass(frozen=True)
class ParsedKey:
    kind: str
    lookup_id: str
    secret: str


def parse_key(raw: str | None) -> ParsedKey | None:
    """The parts of a presented key, or ``None`` if it is not shaped like one."""
    raw = (raw or "").strip()
    for kind, prefix in KEY_PREFIXES.items():
        if raw.startswith(prefix):
            lookup_id, sep, secret = raw[len(prefix) :].partition("_")
            if sep and len(lookup_id) == LOOKUP_LENGTH and len(secret) == SECRET_LENGTH:
                return ParsedKey(kind=kind, lookup_id=lookup_id, secret=secret)
            return None
    return None


def format_key(*, kind: str, lookup_id: str, secret: str) -> str:
    return f"{KEY_PREFIXES[kind]}{lookup_id}_{secret}"


def display_prefix(*, kind: str, lookup_id: str) -> str:
    """What the console shows of a key: its visible prefix and lookup id."""
    return f"{KEY_PREFIXES[kind]}{lookup_id}"


def random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def is_well_formed_secret(secret: str) -> bool:
    return len(secret) == SECRET_LENGTH and set(secret) <= set(ALPHABET)


def secret_from_bytes(material: bytes) -> str:
    """A well-formed secret from ≥32 bytes of pseudo-random material (e.g. an HMAC digest)."""
    if len(material) < 32:
        raise ValueError("need at least 32 bytes of key material")
    number = int.from_bytes(material[:32], "big")
    digits = []
    for _ in range(SECRET_LENGTH):
        number, digit = divmod(number, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(digits)


def secret_digest(pepper: str | bytes, secret: str | bytes) -> str:
    """HMAC-SHA256(pepper, secret) as hex: what the database and the key mirror store."""
    key = pepper.encode() if isinstance(pepper, str) else pepper
    message = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def digest_matches(digest: str, expected: str) -> bool:
    return hmac.compare_digest(digest, expected)


def parse_peppers(raw: str | None, *, require_strong: bool) -> dict[str, str]:
    """``{pepper id: secret}`` from ``BERTH_KEY_PEPPERS``, first = current; raises ``ValueError``.

    ``require_strong`` (production: DEBUG off) refuses secrets shorter than ``MIN_PEPPER_LENGTH``.
    The messages never contain a secret.
    """
    if raw is None or not raw.strip():
        raise ValueError("BERTH_KEY_PEPPERS (or BERTH_KEY_PEPPERS_FILE) must be set")
    peppers: dict[str, str] = {}
    for pair in raw.split(","):
        pid, _, secret = pair.strip().partition(":")
        if not pid or not secret:
            raise ValueError("BERTH_KEY_PEPPERS must look like 'id1:secret1,id2:secret2'")
        if pid in peppers:
            raise ValueError(f"pepper id {pid!r} appears twice in BERTH_KEY_PEPPERS")
        if require_strong and len(secret) < MIN_PEPPER_LENGTH:
            raise ValueError(
                f"pepper {pid!r} in BERTH_KEY_PEPPERS is shorter than {MIN_PEPPER_LENGTH} characters"
            )
        peppers[pid] = secret
    return peppers
