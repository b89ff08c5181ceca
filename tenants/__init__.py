"""Tenants, members and their roles, plans, and API keys."""
