"""schemathesis against ``/api/schema/``: no server errors and no answer outside the schema.

The schema is loaded from the running WSGI app (the same URLconf, middleware and database as the
rest of the suite) and every operation is called as the owner of a tenant that has a key, a
member, an invitation, an invoice and a private model, through a management key
(``Authorization: Bearer mk-berth-…``). Then a stateful run follows the links schemathesis finds
between operations (a key created, then read, revoked and deleted). Examples are bounded so CI
stays fast; ``SCHEMATHESIS_MAX_EXAMPLES`` raises them for a deeper local run.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.security.world import World

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "15"))
# A schema-valid request may still break a rule JSON Schema cannot state (an expiry in the past, a
# date range over the maximum, a model the tenant may not use): a 400 with DRF's error body is the
# right answer there, not a finding. Every other check runs, server errors and schema
# conformance of every answer included.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def owner_key(db) -> str:
    return World().home.management_key


@pytest.fixture
def api_schema(owner_key):
    # As Django's test client does: the WSGI handler must not close the test's connection (and
    # its transaction) at the end of each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
        # Configured, not generated: schemathesis then knows these credentials are valid.
        schema.config.update(headers={"Authorization": f"Bearer {owner_key}"})
        schema.config.checks.update(excluded_check_names=[check.__name__ for check in EXCLUDED_CHECKS])
        yield schema
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def operations(api_schema) -> list:
    found = [result.ok() for result in api_schema.get_all_operations()]
    assert len(found) >= 20, [op.label for op in found]
    return found


# schemathesis' own pytest integration (``from_fixture``) does not run under pytest 9, so each
# operation gets a plain Hypothesis test here, in one pytest test that holds the database.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_operation_conforms(api_schema, mode):
    failures, unsatisfiable = [], []
    found = operations(api_schema)
    for operation in found:

        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode))
        def conforms(case):
            # Each example in a savepoint: one example's database error must not abort the
            # transaction every later example runs in (and its changes must not pile up).
            savepoint = transaction.savepoint()
            try:
                case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)
            finally:
                transaction.savepoint_rollback(savepoint)

        try:
            conforms()
        except Unsatisfiable:
            # No invalid input exists for this operation (a free-form path parameter, no body
            # or query): nothing to send in the negative mode.
            unsatisfiable.append(operation.label)
        except BaseException as exc:  # noqa: BLE001 - Hypothesis raises a BaseExceptionGroup: report all
            details = "\n".join(f"  {sub}" for sub in getattr(exc, "exceptions", [exc]))
            failures.append(f"{operation.label}: {exc}\n{details}")
    assert not failures, "\n\n".join(failures)
    # Only the negative mode may find nothing to send, and not for most operations.
    assert len(unsatisfiable) <= (len(found) // 2 if mode == GenerationMode.NEGATIVE else 0), unsatisfiable


def test_stateful_sequences_conform(api_schema):
    machine = api_schema.as_state_machine()
    assert machine.bundles, "schemathesis found no links between operations"

    machine.run(settings=settings(HYPOTHESIS, max_examples=max(MAX_EXAMPLES // 3, 3), stateful_step_count=6))
