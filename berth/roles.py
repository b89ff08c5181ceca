"""The platform's process roles: the one list every way of running Berth follows.

``manage.py up`` (one machine), ``docker/entrypoint.sh`` (the image's first argument),
``docker/compose.yaml`` (one service per role) and ``docker/k8s/`` (a Deployment or a Job per role)
all start these and only these; ``tests/docker/test_docker.py`` fails when one of them lacks a role
or has one that is not here. A role forgotten in one deployment is how usage once never reached
PostgreSQL in production: the consumer ran only under ``up``.

``command`` is what the role runs, with ``{placeholders}`` that ``up`` fills in; the entrypoint
runs the same program with the same arguments (``signature`` is the part the test looks for).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    name: str
    what: str
    command: tuple[str, ...]
    signature: str  # the program and sub-command, as the entrypoint spells it
    long_running: bool = True
    # How Kubernetes runs it: "Deployment", "Job", or None with the reason in ``kubernetes_note``.
    kubernetes: str | None = "Deployment"
    kubernetes_note: str = ""
    # Environment the role's process gets on top of the deployment's (both up and the entrypoint).
    env: tuple[tuple[str, str], ...] = ()
    # A program that reads no Django settings (the gateway) is handed what the control plane
    # resolved on this machine (``control_plane_env``): under ``up`` that is the embedded Redis
    # and the generated development peppers; a deployment sets the same variables itself.
    takes_control_plane_env: bool = False


ROLES: tuple[Role, ...] = (
    Role(
        "migrate",
        "applies database migrations, then exits (before every release)",
        ("{python}", "{manage}", "migrate", "--noinput"),
        "manage.py migrate",
        long_running=False,
        kubernetes="Job",
    ),
    Role(
        "web",
        "console, admin, management API, /healthz, /internal/* (Django ASGI)",
        (
            "{python}",
            "-m",
            "uvicorn",
            "berth.asgi:application",
            "--host",
            "{web_host}",
            "--port",
            "{web_port}",
            "--lifespan",
            "off",
            "--proxy-headers",
            "--forwarded-allow-ips",
            "{trusted_proxies}",
            "--timeout-graceful-shutdown",
            "20",
        ),
        "uvicorn berth.asgi:application",
        # Django advises against persistent connections under ASGI: every request runs its ORM
        # work in a thread of its own, so a kept connection is never reused, only leaked.
        env=(("BERTH_ROLE", "web"),),
    ),
    Role(
        "gateway",
        "the OpenAI-compatible metering gateway (no PostgreSQL on its path)",
        ("{python}", "-m", "gateway", "--host", "{gateway_host}", "--port", "{gateway_port}"),
        "-m gateway",
        env=(("BERTH_ROLE", "gateway"),),
        takes_control_plane_env=True,
    ),
    Role(
        "usage",
        "usage consumer: the gateway's Redis stream to PostgreSQL (several share the group)",
        ("{python}", "{manage}", "consume_usage", "--metrics-port", "{usage_metrics_port}"),
        "manage.py consume_usage",
        env=(("BERTH_ROLE", "usage"),),
    ),
    Role(
        "worker",
        "Celery worker: reconcile, autoscale, mirror resyncs, invoices, audit export and retention, batches",
        (
            "{python}",
            "-m",
            "celery",
            "-A",
            "berth",
            "worker",
            "-l",
            "INFO",
            "--concurrency",
            "{worker_concurrency}",
            "-n",
            "control@%h",
        ),
        "celery -A berth worker",
        env=(("BERTH_ROLE", "worker"),),
    ),
    Role(
        "beat",
        "Celery beat: the periodic schedule (exactly one per deployment)",
        ("{python}", "-m", "celery", "-A", "berth", "beat", "-l", "INFO", "-s", "{beat_schedule}"),
        "celery -A berth beat",
        env=(("BERTH_ROLE", "beat"),),
    ),
    Role(
        "agent",
        "node agent: one per GPU host, starts engines",
        ("{python}", "{manage}", "node_agent", "--name", "{node_name}"),
        "manage.py node_agent",
        kubernetes=None,
        kubernetes_note="engines are Deployments made by the provisioner (BERTH_PROVISIONER=kubernetes)",
        env=(("BERTH_ROLE", "agent"),),
    ),
)

BY_NAME: dict[str, Role] = {role.name: role for role in ROLES}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def argv(name: str, **values: object) -> list[str]:
    """The role's command line with its placeholders filled in (every one must be given)."""
    return [part.format(**values) for part in BY_NAME[name].command]


def env(name: str) -> dict[str, str]:
    """The role's own environment; called by ``up``, a Django process (settings configured)."""
    role = BY_NAME[name]
    result = dict(role.env)
    if role.takes_control_plane_env:
        result.update(control_plane_env())
    return result


def control_plane_env() -> dict[str, str]:
    """What a Django-free process must be told that Django resolved: the gateway's whole contract.

    Only the variables the gateway reads (``gateway/config.py``), with the values the control plane
    uses, so both sides agree on Redis, its key prefix and the peppers even when they were not in
    the environment (embedded Redis, generated development peppers).
    """
    from django.conf import settings  # noqa: PLC0415 - roles.py is read by Django-free tests too

    result = {
        "REDIS_URL": settings.REDIS_URL,
        "BERTH_REDIS_PREFIX": settings.REDIS_PREFIX,
        "BERTH_KEY_PEPPERS": ",".join(f"{pid}:{secret}" for pid, secret in settings.KEY_PEPPERS.items()),
        "DEBUG": "1" if settings.DEBUG else "0",
        "LOG_LEVEL": settings.LOG_LEVEL,
        # /v1/files and /v1/batches are answered by this machine's web role.
        "BERTH_GATEWAY_CONTROL_PLANE_URL": f"http://{reachable(settings.WEB_HOST)}:{settings.WEB_PORT}",
        "BERTH_FILES_MAX_BYTES": str(settings.FILES_MAX_BYTES),
    }
    if settings.INTERNAL_TOKEN:
        result["BERTH_INTERNAL_TOKEN"] = settings.INTERNAL_TOKEN
    return result


def reachable(host: str) -> str:
    """An address to connect to for a listening host (a wildcard listens on loopback too)."""
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - compared, not bound
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
