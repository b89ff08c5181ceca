"""The gateway process and fake engines of ``tests/gateway`` serve the guardrail tests too."""

from tests.gateway.conftest import engines, gateway  # noqa: F401
