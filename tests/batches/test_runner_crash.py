"""A Celery worker killed mid-batch: another resumes it, no line lost, none run into two records.

Real processes throughout: the gateway, the fake engines, and ``celery -A berth worker`` (as the
``worker`` role runs it) on the test database and the test Redis as broker. The first worker is
SIGKILLed with its pool while lines are in flight; its advisory lock goes with its PostgreSQL
connection, the beat task (``batches.tasks.tick``, called here) sends the batch to the second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from batches import runner, tasks
from batches.models import Batch, BatchLine, BatchStatus, LineStatus
from billing.models import UsageRecord
from tests.batches.conftest import TOKEN, chat_line, make_batch, read_jsonl
from tests.batches.test_runner import model_for, wait_for
from tests.gateway.conftest import make_tenant
from tests.gateway.test_usage import drain
from tests.provisioning import conftest as provisioning_fixtures

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]
broker = provisioning_fixtures.broker  # Celery messages go to the test Redis database

ROOT = Path(__file__).resolve().parents[2]
LINES = 200


class Worker:
    def __init__(self, tmp_path: Path, name: str, gateway_url: str):
        self.log_path = tmp_path / f"worker-{name}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "berth.settings",
            "DATABASE_URL": provisioning_fixtures._test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.REDIS_URL,
            "BERTH_REDIS_PREFIX": settings.REDIS_PREFIX,
            "BERTH_DATA_DIR": str(settings.DATA_DIR),
            "DEBUG": "1",
            "BERTH_INTERNAL_TOKEN": TOKEN,
            "BERTH_GATEWAY_INTERNAL_URL": gateway_url,
            "BERTH_BATCH_CONCURRENCY": "4",
            "PYTHONUNBUFFERED": "1",
        }
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "berth", "worker", "-l", "INFO", "--concurrency", "1",
             "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.text():
                return
            assert self.process.poll() is None, self.text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"worker not ready:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # the worker and its pool child
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def workers(tmp_path, batch_gateway):
    started: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(tmp_path, name, batch_gateway.url)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_a_killed_worker_loses_and_duplicates_no_line(
    broker, workers, runner_settings, engines, redis_client
):
    tenant = make_tenant()
    model = model_for(redis_client, engines)
    lines = [chat_line(f"c-{i}", model, 1 + i % 7, 4, fake_delay=0.02) for i in range(LINES)]
    batch = make_batch(tenant, lines)
    first = workers("first")
    # As the Batches API does it: validation, which hands the batch to a runner on the worker.
    assert tasks.validate_batch(batch.id) == BatchStatus.IN_PROGRESS
    wait_for(lambda: Batch.objects.get(pk=batch.pk).request_completed >= 30, what="the first worker's lines")
    assert runner.has_live_runner(batch.id)
    first.kill()
    done_before = Batch.objects.get(pk=batch.pk).request_completed
    assert done_before < LINES
    wait_for(lambda: not runner.has_live_runner(batch.id), timeout=20, what="the dead worker's lock to go")

    workers("second")
    assert tasks.tick() == 1  # the batch has no runner: sent to one
    wait_for(
        lambda: Batch.objects.get(pk=batch.pk).status == BatchStatus.COMPLETED, timeout=120, what="completion"
    )

    batch.refresh_from_db()
    assert (batch.request_completed, batch.request_failed) == (LINES, 0)
    assert BatchLine.objects.filter(batch=batch, status=LineStatus.OK).count() == LINES
    output = read_jsonl(batch.output_file)
    assert [o["custom_id"] for o in output] == [f"c-{i}" for i in range(LINES)]
    for i, record in enumerate(output):
        assert record["response"]["body"]["usage"]["prompt_tokens"] == 2 + i % 7
    drain()
    records = UsageRecord.objects.filter(batch_id=batch.id)
    assert records.count() == LINES
    assert set(records.values_list("request_id", flat=True)) == {f"{batch.id}_{i}" for i in range(LINES)}
    assert tasks.tick() == 0  # nothing left to resume
