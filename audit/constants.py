"""Choices of the audit trail and the dotted action names services record."""

from django.db import models


class ActorKind(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "Management key"
    STAFF = "staff", "Staff"
    SYSTEM = "system", "System"


class Export(models.TextChoices):
    """Where ``BERTH_AUDIT_EXPORT`` sends new entries (``audit.export``)."""

    NONE = "", "None"
    FILE = "file", "JSON lines to a file"
    SYSLOG = "syslog", "Syslog (RFC 5424)"
    WEBHOOK = "webhook", "Webhook signed with HMAC-SHA256"


# The first entry's ``prev_hash``; an entry after a retention cut keeps its real predecessor's.
GENESIS = ""

# Actions written by the trail itself.
PRUNED = "audit.pruned"

# Fields never copied into before/after, whatever a caller passes.
SECRET_FIELDS = frozenset(
    {"password", "secret", "secret_hash", "token", "token_hash", "key", "plaintext", "api_key", "pepper_id"}
)
