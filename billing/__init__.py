"""Usage records, invoices, Stripe sync and webhooks (billing issue)."""
