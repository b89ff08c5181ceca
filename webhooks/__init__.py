"""Outbound webhooks: a tenant's own systems hear about usage, spend alerts and invoices.

An organization registers endpoints (URL, events, a signing secret shown once). Something that
happens (``events.emit``) becomes one ``WebhookEvent`` with an id ``evt_…`` that stays the same
across retries, plus one ``WebhookDelivery`` per subscribed, enabled endpoint. ``delivery.attempt``
POSTs the event signed like Stripe's (``Berth-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>">``), logs every attempt, and retries with exponential backoff up to
``WEBHOOKS_MAX_ATTEMPTS``. Addresses are resolved and checked before each attempt, and the request
goes to the checked address, so an endpoint cannot make Berth reach its own network.
"""
