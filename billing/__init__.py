"""Usage records, spend limits, invoices, Stripe sync and webhooks."""
