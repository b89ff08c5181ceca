"""The production topology without Docker: every role of berth/roles.py started EXACTLY as the image
starts it (``docker/entrypoint.sh <role>``, one process each), DEBUG off with production settings,
on a database of its own on the test PostgreSQL and a Redis database of its own; a node agent runs
the fake engine. The real ``openai`` SDK's traffic through the gateway must end as usage rows in
PostgreSQL and, once the period is closed, as an invoice. This is what once failed: compose, the
entrypoint and Kubernetes ran no usage consumer, so nothing was ever invoiced.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import psycopg
import pytest
import redis as redis_lib
from django.conf import settings
from django.db import connection

from berth import roles
from tests.billing.tcp_proxy import TcpProxy

pytestmark = pytest.mark.processes  # every role through docker/entrypoint.sh

ROOT = Path(settings.BASE_DIR)
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
GATEWAY_WITHHELD = {"DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "STRIPE_SECRET_KEY"}
TOPOLOGY_REDIS_DB = 13
MODEL = "topo-chat"
INTERNAL_TOKEN = "internal-" + "t" * 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_dsn(dbname: str) -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgresql://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT']}/{dbname}"


@pytest.fixture
def dedicated_database():
    name = f"berth_topology_{os.getpid()}"
    with psycopg.connect(admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin_dsn(name)
    with psycopg.connect(admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dedicated_redis():
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    url = f"{base}/{TOPOLOGY_REDIS_DB}"
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    yield url
    client.flushdb()


class Topology:
    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.tmp_path = tmp_path
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, timeout: float = 240) -> str:
        """A one-shot role (``migrate``, ``manage …``), as ``docker run berth <args>`` would."""
        result = subprocess.run(  # noqa: S603
            ["/bin/sh", str(ENTRYPOINT), *args],
            env=self.env,
            cwd=self.tmp_path,  # the entrypoint finds the repository itself
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, role: str) -> None:
        log = open(self.tmp_path / f"{role}.log", "wb")  # noqa: SIM115 - closed when the test ends
        env = self.env
        if role == "gateway":  # as deployments run it: no database, no Django at all
            env = {k: v for k, v in env.items() if k not in GATEWAY_WITHHELD}
        self.processes[role] = subprocess.Popen(  # noqa: S603
            ["/bin/sh", str(ENTRYPOINT), role],
            env=env,
            cwd=self.tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, role: str) -> str:
        path = self.tmp_path / f"{role}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"===== {role}\n{self.log(role)}" for role in self.processes)

    def alive(self) -> None:
        for role, process in self.processes.items():
            assert process.poll() is None, f"{role} exited with {process.returncode}:\n{self.log(role)}"

    def wait(self, predicate, what: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                result = predicate()
            except (OSError, psycopg.Error):
                result = None
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {timeout}s\n{self.logs()}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Whatever a role left in its group (engines, pool processes) goes too.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def http_status(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_role_started_by_the_entrypoint_bills_sdk_traffic(
    tmp_path, dedicated_database, dedicated_redis
):
    web_port, gateway_port, usage_port = free_port(), free_port(), free_port()
    # Every role reaches PostgreSQL through a proxy the test can cut, as an outage would.
    direct = psycopg.conninfo.conninfo_to_dict(dedicated_database)
    proxy = TcpProxy(direct["host"], int(direct["port"]))
    proxied_database = dedicated_database.replace(f":{direct['port']}/", f":{proxy.port}/")
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BERTH_", "DATABASE_", "REDIS_", "DEBUG"))
        },
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "BERTH_PYTHON": sys.executable,
        "DJANGO_SETTINGS_MODULE": "berth.settings",
        "PYTHONUNBUFFERED": "1",
        # Production settings: DEBUG off, every secret given, a database and Redis db of its own.
        "DEBUG": "0",
        "SECRET_KEY": uuid.uuid4().hex * 3,
        "BERTH_KEY_PEPPERS": "p1:" + uuid.uuid4().hex * 2,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BERTH_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "DATABASE_URL": proxied_database,
        "REDIS_URL": dedicated_redis,
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "STATIC_ROOT": str(tmp_path / "static"),
        # Plain HTTP on loopback (a TLS proxy would sit in front in production).
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "BERTH_WEB_HOST": "127.0.0.1",
        "BERTH_WEB_PORT": str(web_port),
        "BERTH_GATEWAY_HOST": "127.0.0.1",
        "BERTH_GATEWAY_PORT": str(gateway_port),
        "BERTH_USAGE_METRICS_PORT": str(usage_port),
        "WEB_CONCURRENCY": "1",
        "GATEWAY_WORKERS": "1",
        "CELERY_CONCURRENCY": "1",
        "BERTH_NODE_NAME": "topology-node",
        "BERTH_CPU_SLOTS": "1",
        "BERTH_RECONCILE_SECONDS": "1",
        "BERTH_HEARTBEAT_SECONDS": "1",
        "BERTH_BILLING_PERIOD": "day",
        "BERTH_ENGINE_LAUNCHER_OVERRIDE": "tests.provisioning.fake_engine.build_launch",
        "PYTHONPATH": str(ROOT),  # the fake engine's launcher lives under tests/
    }
    topology = Topology(tmp_path, env)
    topology.run("migrate")
    try:
        for role in roles.NAMES:
            if roles.BY_NAME[role].long_running:
                topology.start(role)
        assert set(topology.processes) == set(roles.NAMES) - {"migrate"}

        topology.wait(lambda: http_status(f"http://127.0.0.1:{web_port}/healthz") == 200, "healthy web")
        topology.wait(
            lambda: http_status(f"http://127.0.0.1:{gateway_port}/healthz") == 200, "healthy gateway"
        )
        topology.wait(
            lambda: http_status(f"http://127.0.0.1:{usage_port}/readyz") == 200, "consuming consumer"
        )
        # Private by default: /internal/* needs the token.
        pool = f"http://127.0.0.1:{web_port}/internal/metrics"
        assert http_status(pool) == 401
        assert http_status(pool, {"Authorization": f"Bearer {INTERNAL_TOKEN}"}) == 200

        # An operator registers a priced model with one CPU replica, a tenant and a key.
        topology.run(
            "manage", "shell", "-c",
            "from datetime import UTC, datetime; from decimal import Decimal; "
            "from models_registry import catalog; "
            "from models_registry.models import Deployment, Model, Price; "
            f"m = catalog.save_model(model=Model(name='{MODEL}', source_kind='local', source='/models/none', "
            "task='chat', context_length=2048)); "
            "Deployment.objects.create(model=m, engine='cpu', min_replicas=1, max_replicas=1, desired_replicas=1); "
            "catalog.add_price(price=Price(model=m, input_per_million=Decimal('1000'), "
            "output_per_million=Decimal('2000'), effective_from=datetime(2025, 1, 1, tzinfo=UTC)))",
        )  # fmt: skip
        topology.run("manage", "create_tenant", "--name", "Topology Inc", "--slug", "topology",
                     "--owner-email", "owner@topology.test", "--password", "a long passphrase 42")  # fmt: skip
        key = topology.run("manage", "create_api_key", "--tenant", "topology", "--name", "sdk").strip()
        assert key.startswith("sk-berth-")

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key=key, max_retries=0)

        def answered():
            try:
                return client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello"}], timeout=10
                )
            except openai.APIError:
                return None

        # Beat → worker (reconcile) → the agent's queue → the engine → ready → the gateway's route.
        first = topology.wait(answered, "answer through the gateway", timeout=180)
        replies = [first] + [
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"n{i}"}])
            for i in range(4)
        ]
        prompt = sum(r.usage.prompt_tokens for r in replies)
        completion = sum(r.usage.completion_tokens for r in replies)
        assert prompt > 0 and completion > 0

        with psycopg.connect(dedicated_database, autocommit=True) as db:

            def recorded():
                return db.execute(
                    "SELECT count(*), sum(prompt_tokens), sum(completion_tokens) FROM billing_usagerecord "
                    "WHERE model = %s",
                    [MODEL],
                ).fetchone()

            rows = topology.wait(
                lambda: recorded()[0] == len(replies) and recorded(), "usage rows", timeout=60
            )
            assert rows == (len(replies), prompt, completion)

            # The period ends (the closing process's clock moves to the next day) and is invoiced.
            today = datetime.now(UTC).date()
            after = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(
                minutes=5
            )
            topology.run(
                "manage", "shell", "-c",
                "import time_machine; from django.core.management import call_command; "
                f"traveller = time_machine.travel({after.timestamp()}, tick=False); traveller.start(); "
                f"call_command('close_billing_period', '--period', '{today.isoformat()}', '--no-stripe')",
            )  # fmt: skip
            invoice = db.execute(
                "SELECT i.total, i.currency, sum(l.tokens) FROM billing_invoice i "
                "JOIN tenants_tenant t ON t.id = i.tenant_id JOIN billing_invoiceline l ON l.invoice_id = i.id "
                "WHERE t.slug = 'topology' GROUP BY i.id"
            ).fetchall()
            assert len(invoice) == 1
            total, currency, tokens = invoice[0]
            assert tokens == prompt + completion
            expected = (prompt * 1000 + completion * 2000) / 1_000_000
            assert abs(float(total) - expected) < 0.02 and total > 0, (total, expected)

        # The consumer's lag reached Prometheus' format on its own port.
        scrape = f"http://127.0.0.1:{usage_port}/metrics"
        assert http_status(scrape) == 401  # the same token as /internal/*
        request = urllib.request.Request(scrape, headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"})  # noqa: S310
        metrics = urllib.request.urlopen(request, timeout=5).read().decode()  # noqa: S310
        assert "berth_usage_events_consumed_total" in metrics and "berth_usage_pending 0.0" in metrics
        topology.alive()
    finally:
        topology.stop()
        proxy.cut()
        (tmp_path / "logs.txt").write_text(topology.logs())
