"""Settings come from the environment only, and production refuses insecure configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'secure': s.SESSION_COOKIE_SECURE, 'csrf': s.CSRF_COOKIE_SECURE, "
    "'hsts': s.SECURE_HSTS_SECONDS, 'ssl': s.SECURE_SSL_REDIRECT, 'hosts': s.ALLOWED_HOSTS, "
    "'db': s.DATABASES['default']['NAME'], 'peppers': list(s.KEY_PEPPERS), "
    "'usage_metrics_host': s.USAGE_METRICS_HOST}))"
)
STRONG = "x" * 20 + "Q7k2P9mZ4wB1nV8cR3tY6uJ0hL5dF2gS"


def run_settings(tmp_path, **env):
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEBUG", "SECRET_KEY", "BERTH_", "ALLOWED"))
    }
    base.update(
        DJANGO_SETTINGS_MODULE="berth.settings",
        DATABASE_URL=settings.DATABASE_URL,
        REDIS_URL=settings.REDIS_URL,
        BERTH_DATA_DIR=str(tmp_path),
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=settings.BASE_DIR,
    )


def production(**extra):
    env = {
        "DEBUG": "0",
        "SECRET_KEY": STRONG,
        "BERTH_KEY_PEPPERS": "p1:" + "k" * 40,
        "ALLOWED_HOSTS": "berth.example",
        "BERTH_INTERNAL_TOKEN": "i" * 40,
    }
    env.update(extra)
    return env


def test_production_turns_on_secure_cookies_and_hsts(tmp_path):
    result = run_settings(tmp_path, **production())
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["debug"] is False
    assert probe["secure"] and probe["csrf"] and probe["ssl"]
    assert probe["hsts"] >= 31536000
    assert probe["hosts"] == ["berth.example"]
    assert probe["usage_metrics_host"] == "0.0.0.0"  # noqa: S104 - probes and Prometheus reach the pod


def test_development_binds_the_consumers_open_metrics_to_loopback(tmp_path):
    result = run_settings(tmp_path, DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["usage_metrics_host"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "too weak"),
        ({"SECRET_KEY": "django-insecure-" + "a" * 60}, "too weak"),
        ({"BERTH_KEY_PEPPERS": ""}, "BERTH_KEY_PEPPERS"),
        ({"BERTH_KEY_PEPPERS": "p1:tooshort"}, "shorter than 32"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"BERTH_INTERNAL_TOKEN": ""}, "BERTH_INTERNAL_TOKEN"),
        ({"BERTH_INTERNAL_TOKEN": "short"}, "BERTH_INTERNAL_TOKEN is too weak"),
        ({"DEBUG": "maybe"}, "DEBUG must be one of"),
        ({"DATABASE_URL": "sqlite:///x.db"}, "needs PostgreSQL"),
    ],
)
def test_production_refuses_insecure_or_malformed_config(tmp_path, override, message):
    result = run_settings(tmp_path, **production(**override))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_secrets_can_come_from_files(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(STRONG + "\n")
    result = run_settings(tmp_path, **production(SECRET_KEY="", SECRET_KEY_FILE=str(secret_file)))
    assert result.returncode == 0, result.stderr


def test_development_generates_and_reuses_secrets_in_the_data_dir(tmp_path):
    first = run_settings(tmp_path, DEBUG="1")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["peppers"] == ["dev"]
    secret = (tmp_path / "secrets" / "SECRET_KEY").read_text()
    assert oct((tmp_path / "secrets" / "SECRET_KEY").stat().st_mode & 0o777) == "0o600"
    second = run_settings(tmp_path, DEBUG="1")
    assert second.returncode == 0
    assert (tmp_path / "secrets" / "SECRET_KEY").read_text() == secret
