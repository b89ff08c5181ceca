"""Event types and delivery states of outbound webhooks."""

from django.db import models


class EventType(models.TextChoices):
    USAGE_DAILY = "usage.daily", "usage.daily: yesterday's tokens and cost per model"
    SPEND_THRESHOLD = "spend.threshold", "spend.threshold: a spend alert fired"
    INVOICE_CREATED = "invoice.created", "invoice.created: an invoice was issued"
    INVOICE_PAID = "invoice.paid", "invoice.paid: an invoice was paid"
    TEST = "webhook.test", "webhook.test: sent from the console or the API"


# What an endpoint can subscribe to (the test event goes to the one endpoint it is sent to).
SUBSCRIBABLE = [choice for choice in EventType if choice != EventType.TEST]


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # every attempt used
    CANCELLED = "cancelled", "Cancelled"  # the endpoint was disabled or deleted meanwhile


# Seconds before attempt n+1 after attempt n failed; the last value repeats.
BACKOFF_SECONDS = (60, 300, 1800, 7200, 21600)
SIGNATURE_HEADER = "Berth-Signature"
SNIPPET_CHARS = 500
