"""Django settings for Berth, read from the environment only.

Every variable is listed in the README's configuration table. With no ``DATABASE_URL`` or
``REDIS_URL`` the embedded PostgreSQL/Redis (``berth/embedded.py``) are started and used; that
is also what makes ``DEBUG`` default to on (a production deployment always names its database).
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from decimal import Decimal
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from batches.storage import storage_settings as _files_storage_settings
from berth import embedded
from berth.env import env_bool, env_int, env_list, env_secret, env_str
from contract import tiers as _tiers
from contract.api_keys import parse_peppers
from contract.redis_names import normalize_prefix

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("BERTH_DATA_DIR", str(BASE_DIR / "var"))).resolve()

_database_url = env_str("DATABASE_URL")
_redis_url = env_str("REDIS_URL")
EMBEDDED_DATABASE = not _database_url
EMBEDDED_REDIS = not _redis_url

DEBUG = env_bool("DEBUG", default=EMBEDDED_DATABASE)

# --------------------------------------------------------------------------- secrets


def _dev_secret(name: str) -> str:
    """A random secret generated once per data dir, for development only."""
    path = DATA_DIR / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(50)
    path.write_text(value)
    path.chmod(0o600)
    return value


def _required_secret(name: str, *, min_length: int) -> str:
    value = env_secret(name)
    if value is None:
        if DEBUG:
            return _dev_secret(name)
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set when DEBUG is off")
    if not DEBUG and (len(value) < min_length or value.startswith("django-insecure")):
        raise ImproperlyConfigured(
            f"{name} is too weak for production: use at least {min_length} random characters"
        )
    return value


SECRET_KEY = _required_secret("SECRET_KEY", min_length=50)

# API keys are stored as HMAC-SHA256(pepper, secret). BERTH_KEY_PEPPERS holds "id:secret" pairs;
# the first is used for new keys, the others still verify older keys (rotation).
_peppers_raw = env_secret("BERTH_KEY_PEPPERS")
if _peppers_raw is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "BERTH_KEY_PEPPERS (or BERTH_KEY_PEPPERS_FILE) must be set when DEBUG is off"
        )
    _peppers_raw = f"dev:{_dev_secret('BERTH_KEY_PEPPERS')}"
try:
    KEY_PEPPERS: dict[str, str] = parse_peppers(_peppers_raw, require_strong=not DEBUG)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
CURRENT_PEPPER_ID = next(iter(KEY_PEPPERS))

# --------------------------------------------------------------------------- hosts & security

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")

SECURE = not DEBUG
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SECURE)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if SECURE else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# /healthz is probed over plain HTTP by load balancers and orchestrators.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^internal/"]

# --------------------------------------------------------------------------- apps

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_ratelimit",
    "berth.apps.BerthConfig",
    "tenants",
    "models_registry",
    "provisioning",
    "billing",
    "console",
    "staff",
    "audit",
    "guardrails",
    "economics",
    "webhooks",
    "batches",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenants.middleware.CurrentTenantMiddleware",
    "audit.context.AuditContextMiddleware",
]

ROOT_URLCONF = "berth.urls"
ASGI_APPLICATION = "berth.asgi.application"
WSGI_APPLICATION = "berth.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.console",
            ],
        },
    },
]

# --------------------------------------------------------------------------- data stores

# BERTH_EMBEDDED_AUTOSTART=0 (set by `manage.py embedded`) resolves the URLs without starting.
if env_bool("BERTH_EMBEDDED_AUTOSTART", True):
    if EMBEDDED_DATABASE:
        _database_url = embedded.ensure_postgres(DATA_DIR).url
    if EMBEDDED_REDIS:
        _redis_url = embedded.ensure_redis(DATA_DIR).url
else:
    _pg, _rd = embedded.configured_urls(DATA_DIR)
    _database_url, _redis_url = _database_url or _pg, _redis_url or _rd
DATABASE_URL: str = _database_url  # type: ignore[assignment]
REDIS_URL: str = _redis_url  # type: ignore[assignment]

# The ASGI web process (BERTH_ROLE=web, set by berth/roles.py) closes its connection after each
# request: Django runs each request's ORM work in a thread of its own under ASGI, so a persistent
# connection is never reused there, only held. Celery, the consumer and the agent keep theirs.
PROCESS_ROLE = env_str("BERTH_ROLE", "")
CONN_MAX_AGE = 0 if PROCESS_ROLE == "web" else env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=CONN_MAX_AGE,
        conn_health_checks=True,
    )
}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("Berth needs PostgreSQL: DATABASE_URL must be a postgresql:// URL")
DATABASES["default"]["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "test_berth")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Prefix for every Redis key Berth writes (keys mirror, routing table, quotas, usage stream).
REDIS_PREFIX = normalize_prefix(env_str("BERTH_REDIS_PREFIX"))

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{REDIS_PREFIX}cache",
    }
}

# --------------------------------------------------------------------------- auth

AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:overview"
LOGOUT_REDIRECT_URL = "login"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous object permissions

# Self-service sign-ups verify their address through a signed link valid this long.
EMAIL_VERIFICATION_MAX_AGE = env_int("BERTH_EMAIL_VERIFICATION_HOURS", 72, minimum=1) * 3600

# --------------------------------------------------------------------------- throttling

# django-ratelimit counts in the shared Redis cache, so every web replica sees the same windows.
# Each flow has a per-IP and a per-account rate, "COUNT/PERIOD" (s, m, h, d; "15m" allowed).
_RATE = re.compile(r"^\d+/\d*[smhd]$")


def _rate_pair(name: str, default: str) -> tuple[str, str]:
    raw = env_str(name, default) or default
    pair = tuple(part.strip() for part in raw.split(","))
    if len(pair) != 2 or not all(_RATE.match(rate) for rate in pair):
        raise ImproperlyConfigured(
            f"{name} must look like '30/15m,10/15m' (per IP, per account); got {raw!r}"
        )
    return pair  # type: ignore[return-value]


THROTTLE_RATES = {
    "login": _rate_pair("BERTH_LOGIN_RATE", "30/15m,10/15m"),
    "signup": _rate_pair("BERTH_SIGNUP_RATE", "10/h,3/h"),
    "password_reset": _rate_pair("BERTH_PASSWORD_RESET_RATE", "10/h,3/h"),
    "invitation": _rate_pair("BERTH_INVITATION_RATE", "60/h,30/h"),
}
# Invitations (console and API) a tenant may send per 24 hours: any self-service owner could
# otherwise make the platform mail anyone.
INVITATIONS_PER_TENANT_PER_DAY = env_int("BERTH_INVITATIONS_PER_TENANT_PER_DAY", 50, minimum=1)
RATELIMIT_USE_CACHE = "default"
# Django's RedisCache does the atomic add/incr django-ratelimit needs; the check predates it.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
RATELIMIT_FAIL_OPEN = True  # see tenants/throttling.py

# --------------------------------------------------------------------------- i18n & static

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# Front-end libraries come from npm (package.json / package-lock.json, `npm ci`), never pasted in:
# each package's dist/ folder is served under static/vendor/<name>/ (console/checks.py says what to
# run when node_modules is missing). NODE_MODULES_DIR lets a Docker build stage put them elsewhere.
NODE_MODULES_DIR = Path(env_str("BERTH_NODE_MODULES", str(BASE_DIR / "node_modules")))
FRONTEND_VENDOR = {"htmx": "htmx.org/dist", "chartjs": "chart.js/dist"}
STATICFILES_DIRS: list = [(f"vendor/{name}", NODE_MODULES_DIR / sub) for name, sub in FRONTEND_VENDOR.items()]
WHITENOISE_USE_FINDERS = DEBUG
# WhiteNoise serves files through a sync iterator; under ASGI Django warns about it on every file.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

# Files of the Files and Batch APIs (batches/): the "berth_files" storage. The local filesystem
# under BERTH_DATA_DIR/files by default; batches.storage documents the S3 settings.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "berth_files": _files_storage_settings(data_dir=DATA_DIR, environ=os.environ),
}
# An uploaded file's size limit (413 above it), and each tenant's stored files (count and bytes).
FILES_MAX_BYTES = env_int("BERTH_FILES_MAX_BYTES", 200 * 1024 * 1024, minimum=1)
FILES_MAX_PER_TENANT = env_int("BERTH_FILES_MAX_PER_TENANT", 10_000, minimum=1)
FILES_MAX_TENANT_BYTES = env_int("BERTH_FILES_MAX_TENANT_BYTES", 100 * 1024**3, minimum=1)
# Requests in one batch input file (OpenAI's limit).
BATCH_MAX_REQUESTS = env_int("BERTH_BATCH_MAX_REQUESTS", 50_000, minimum=1)

# --------------------------------------------------------------------------- email

EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Berth <noreply@localhost>")

# --------------------------------------------------------------------------- DRF

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.authentication.ManagementKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "berth.parsers.StrictMultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "berth.pagination.Pagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Berth management API",
    "DESCRIPTION": "Tenants, members and API keys. Inference itself is served by the gateway at /v1.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets are served from the drf-spectacular-sidecar package (no CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The management-key scheme and the error answers of every operation (berth/api_router.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "berth.api_router.document_errors",
    ],
    # One name for the guardrail action choices, used by several fields.
    "ENUM_NAME_OVERRIDES": {"GuardrailActionEnum": "guardrails.models.Action"},
}

# --------------------------------------------------------------------------- Celery

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240, minimum=1)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{REDIS_PREFIX}celery:"}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "tenants-resync-key-mirror": {
        "task": "tenants.tasks.resync_key_mirror",
        "schedule": env_int("BERTH_KEY_MIRROR_RESYNC_SECONDS", 300, minimum=10),
    },
    # Provisioning (workers/): both tasks take an advisory lock, so overlapping runs are harmless.
    "workers-reconcile": {
        "task": "provisioning.tasks.reconcile",
        "schedule": env_int("BERTH_RECONCILE_SECONDS", 5, minimum=1),
    },
    "workers-autoscale": {
        "task": "provisioning.tasks.autoscale",
        "schedule": env_int("BERTH_AUTOSCALE_SECONDS", 10, minimum=1),
    },
    "models-resync-mirror": {
        "task": "models_registry.tasks.resync_model_mirror",
        "schedule": env_int("BERTH_KEY_MIRROR_RESYNC_SECONDS", 300, minimum=10),
    },
    "billing-check-spend": {
        "task": "billing.tasks.check_spend",
        "schedule": env_int("BERTH_SPEND_CHECK_SECONDS", 60, minimum=5),
    },
    "tenants-flush-key-last-used": {
        "task": "tenants.tasks.flush_key_last_used",
        "schedule": 30,
    },
    # Billing (billing/tasks.py): closing a period is idempotent, so hourly just catches up.
    "billing-close-periods": {
        "task": "billing.tasks.close_periods",
        "schedule": 3600,
    },
    "billing-sync-pending-invoices": {
        "task": "billing.tasks.sync_pending_invoices",
        "schedule": 600,
    },
    "guardrails-resync-mirror": {
        "task": "guardrails.tasks.resync_mirror",
        "schedule": env_int("BERTH_KEY_MIRROR_RESYNC_SECONDS", 300, minimum=10),
    },
    "guardrails-store-content-log": {
        "task": "guardrails.tasks.store_content_log",
        "schedule": 10,
    },
    "guardrails-purge-content": {
        "task": "guardrails.tasks.purge_content",
        "schedule": 3600,
    },
    "billing-enforce-payment-grace": {
        "task": "billing.tasks.enforce_payment_grace",
        "schedule": 3600,
    },
    # The audit trail (audit/tasks.py): each is safe to overlap (cursor row lock, chain lock, group).
    "audit-export": {
        "task": "audit.tasks.export",
        "schedule": env_int("BERTH_AUDIT_EXPORT_SECONDS", 30, minimum=1),
    },
    "audit-prune": {
        "task": "audit.tasks.prune",
        "schedule": 3600,
    },
    "audit-record-expired-keys": {
        "task": "audit.tasks.record_expired_keys",
        "schedule": 60,
    },
    # Economics (economics/sampler.py): one busy/idle sample per ready worker.
    "economics-sample-utilization": {
        "task": "economics.tasks.sample_utilization",
        "schedule": env_int("BERTH_UTILIZATION_SAMPLE_SECONDS", 60, minimum=5),
    },
    "audit-consume-gateway-events": {
        "task": "audit.tasks.consume_gateway_events",
        "schedule": env_int("BERTH_AUDIT_EVENTS_SECONDS", 5, minimum=1),
    },
    # Outbound webhooks (webhooks/tasks.py): yesterday's usage after midnight UTC (idempotent per
    # day), and a sweep that redelivers what is due (a claimed delivery is not sent twice).
    "webhooks-usage-daily": {
        "task": "webhooks.tasks.usage_daily",
        "schedule": crontab(minute=15, hour="0,6"),
    },
    "webhooks-sweep": {
        "task": "webhooks.tasks.sweep",
        "schedule": 60,
    },
    # Batches (batches/tasks.py): resumes batches whose runner died, finishes cancels, expires.
    "batches-tick": {
        "task": "batches.tasks.tick",
        "schedule": env_int("BERTH_BATCH_TICK_SECONDS", 15, minimum=1),
    },
}

# --------------------------------------------------------------------------- Berth

WEB_HOST = env_str("BERTH_WEB_HOST", "127.0.0.1")
WEB_PORT = env_int("BERTH_WEB_PORT", 8000, minimum=1)
GATEWAY_HOST = env_str("BERTH_GATEWAY_HOST", "127.0.0.1")
GATEWAY_PORT = env_int("BERTH_GATEWAY_PORT", 8001, minimum=1)
# On SIGTERM the gateway stops accepting and lets in-flight requests finish for this long; what is
# cut after it is billed as delivered (status gateway_stopped).
GATEWAY_GRACE_SECONDS = env_int("BERTH_GATEWAY_GRACE_SECONDS", 30, minimum=0)
# The URL tenants use for inference; shown in the console's snippets.
# Where people reach the console; links in emails point here.
WEB_PUBLIC_URL = env_str("BERTH_WEB_URL", f"http://{WEB_HOST}:{WEB_PORT}").rstrip("/")
GATEWAY_PUBLIC_URL = env_str("BERTH_GATEWAY_URL", f"http://{GATEWAY_HOST}:{GATEWAY_PORT}/v1")
DEFAULT_PLAN_SLUG = env_str("BERTH_DEFAULT_PLAN", "free")
# Batch lines (batches/runner.py) go through the gateway at this address, the cluster-internal one
# (not BERTH_GATEWAY_URL, which is what tenants reach); every deployment sets it.
GATEWAY_INTERNAL_URL = env_str("BERTH_GATEWAY_INTERNAL_URL", f"http://127.0.0.1:{GATEWAY_PORT}").rstrip("/")
# Lines of one batch in flight at once (a batch names one model, so this bounds each runner's load
# on that model), how long one runner task runs before handing over to the next (the task time
# limit stays bounded), and how long one line may take.
BATCH_CONCURRENCY = env_int("BERTH_BATCH_CONCURRENCY", 16, minimum=1)
BATCH_SLICE_SECONDS = env_int("BERTH_BATCH_SLICE_SECONDS", 240, minimum=5)
BATCH_REQUEST_TIMEOUT = env_int("BERTH_BATCH_REQUEST_TIMEOUT", 600, minimum=1)
BATCH_MAX_LINES = env_int("BERTH_BATCH_MAX_LINES", 50_000, minimum=1)
# Bearer token for /internal/* (Prometheus service discovery and pool gauges) and the gateway's
# /metrics. Required when DEBUG is off; only a DEBUG start-up may leave them open on loopback.
INTERNAL_TOKEN = env_secret("BERTH_INTERNAL_TOKEN")
if not DEBUG and not INTERNAL_TOKEN:
    raise ImproperlyConfigured(
        "BERTH_INTERNAL_TOKEN (or BERTH_INTERNAL_TOKEN_FILE) must be set when DEBUG is off"
    )
if not DEBUG and len(INTERNAL_TOKEN or "") < 32:
    raise ImproperlyConfigured(
        "BERTH_INTERNAL_TOKEN is too weak for production: use at least 32 random characters"
    )
INTERNAL_OPEN_WITHOUT_TOKEN = DEBUG
# Addresses (or networks) whose X-Forwarded-For/-Proto uvicorn believes, for web and the gateway
# (passed as --forwarded-allow-ips / FORWARDED_ALLOW_IPS by the entrypoint and `up`).
TRUSTED_PROXIES = env_list("BERTH_TRUSTED_PROXIES", ["127.0.0.1"])
# The usage consumer's Prometheus port (lag, pending, errors), read by its probes too.
USAGE_METRICS_PORT = env_int("BERTH_USAGE_METRICS_PORT", 9102, minimum=0)
# All interfaces in production (probes and Prometheus reach the pod; the token guards it); only
# loopback on a development machine, where the endpoint is open without a token.
USAGE_METRICS_HOST = env_str("BERTH_USAGE_METRICS_HOST", "127.0.0.1" if DEBUG else "0.0.0.0")  # noqa: S104

# --------------------------------------------------------------------------- audit trail (audit/)

# Where new audit entries go for a SIEM: "" (nowhere), file, syslog or webhook (audit/export.py).
AUDIT_EXPORT = env_str("BERTH_AUDIT_EXPORT", "").lower()
if AUDIT_EXPORT not in ("", "file", "syslog", "webhook"):
    raise ImproperlyConfigured("BERTH_AUDIT_EXPORT must be file, syslog, webhook or empty")
AUDIT_EXPORT_PATH = env_str("BERTH_AUDIT_EXPORT_PATH", str(DATA_DIR / "audit.jsonl"))
AUDIT_EXPORT_SYSLOG = env_str("BERTH_AUDIT_EXPORT_SYSLOG", "")  # udp://host:514 or tcp://host:601
AUDIT_EXPORT_WEBHOOK_URL = env_str("BERTH_AUDIT_EXPORT_WEBHOOK_URL", "")
AUDIT_EXPORT_WEBHOOK_SECRET = env_secret("BERTH_AUDIT_EXPORT_WEBHOOK_SECRET")
AUDIT_EXPORT_BATCH = env_int("BERTH_AUDIT_EXPORT_BATCH", 500, minimum=1)
if AUDIT_EXPORT == "syslog" and not AUDIT_EXPORT_SYSLOG.startswith(("udp://", "tcp://")):
    raise ImproperlyConfigured("BERTH_AUDIT_EXPORT_SYSLOG must be udp://host:port or tcp://host:port")
if AUDIT_EXPORT == "webhook" and not (AUDIT_EXPORT_WEBHOOK_URL and AUDIT_EXPORT_WEBHOOK_SECRET):
    raise ImproperlyConfigured(
        "BERTH_AUDIT_EXPORT=webhook needs BERTH_AUDIT_EXPORT_WEBHOOK_URL and BERTH_AUDIT_EXPORT_WEBHOOK_SECRET"
    )
# --------------------------------------------------------------------------- outbound webhooks (webhooks/)

# Deliver to private, loopback and link-local addresses too (tests, an intranet receiver); off,
# a tenant's endpoint could make Berth probe its own network (SSRF).
WEBHOOKS_ALLOW_PRIVATE = env_bool("BERTH_WEBHOOKS_ALLOW_PRIVATE", default=False)
WEBHOOKS_TIMEOUT_SECONDS = env_int("BERTH_WEBHOOKS_TIMEOUT_SECONDS", 10, minimum=1)
# Attempts per delivery before it is given up (1 min, 5 min, 30 min, 2 h, then every 6 h).
WEBHOOKS_MAX_ATTEMPTS = env_int("BERTH_WEBHOOKS_MAX_ATTEMPTS", 8, minimum=1)
# Endpoints per organization.
WEBHOOKS_MAX_ENDPOINTS = env_int("BERTH_WEBHOOKS_MAX_ENDPOINTS", 10, minimum=1)
# Days events and their delivery log are kept (the sweep deletes older ones).
WEBHOOKS_LOG_DAYS = env_int("BERTH_WEBHOOKS_LOG_DAYS", 30, minimum=1)

# Days an audit entry is kept; 0 keeps everything (audit/retention.py).
AUDIT_RETENTION_DAYS = env_int("BERTH_AUDIT_RETENTION_DAYS", 0, minimum=0)

# --------------------------------------------------------------------------- billing (billing/)

BILLING_PERIOD = env_str("BERTH_BILLING_PERIOD", "month")  # month | week | day (billing/periods.py)
BILLING_CURRENCY = env_str("BERTH_BILLING_CURRENCY", "USD").upper()
# A price without its own cached-input price charges prompt tokens served from the engine's prefix
# cache at this fraction of its input price (models_registry.models.Price.cached_input_price).
_cached_fraction = env_str("BERTH_CACHED_INPUT_FRACTION", "0.5")
try:
    CACHED_INPUT_FRACTION = Decimal(_cached_fraction)
except ArithmeticError:
    raise ImproperlyConfigured(
        f"BERTH_CACHED_INPUT_FRACTION must be a number, not {_cached_fraction!r}"
    ) from None
if not CACHED_INPUT_FRACTION.is_finite() or not 0 <= CACHED_INPUT_FRACTION <= 1:
    raise ImproperlyConfigured("BERTH_CACHED_INPUT_FRACTION must be between 0 and 1")
# Who issues invoices: printed under the title of every invoice PDF (name, address, tax id).
BILLING_ISSUER = env_str("BERTH_BILLING_ISSUER", "Berth inference platform")
# Percent-of-limit budget alerts a new tenant gets; each tenant can change theirs in settings.
SPEND_ALERT_THRESHOLDS = [
    int(x) for x in env_str("BERTH_SPEND_ALERT_THRESHOLDS", "50,80,100").split(",") if x
]
# After a failed payment: a warning at once, suspension when the invoice is still unpaid after this.
PAYMENT_GRACE_DAYS = env_int("BERTH_PAYMENT_GRACE_DAYS", 7, minimum=0)
INVOICE_DAYS_UNTIL_DUE = env_int("BERTH_INVOICE_DAYS_UNTIL_DUE", 14, minimum=0)

# Percent of a price billed per service tier when the price row sets none (contract.tiers), as
# "flex=50,priority=200,batch=50"; the default tier is always 100.
TIER_PRICE_PERCENT = dict(_tiers.DEFAULT_PRICE_PERCENT)
for _item in filter(None, (p.strip() for p in env_str("BERTH_TIER_PRICE_PERCENT", "").split(","))):
    _tier, _, _value = _item.partition("=")
    if _tier.strip() not in ("flex", "priority", "batch"):
        raise ImproperlyConfigured(
            f"BERTH_TIER_PRICE_PERCENT: unknown tier {_tier.strip()!r} (flex, priority, batch)"
        )
    try:
        TIER_PRICE_PERCENT[_tier.strip()] = Decimal(_value.strip())
    except ArithmeticError:
        raise ImproperlyConfigured(f"BERTH_TIER_PRICE_PERCENT: {_value.strip()!r} is not a number") from None
    if not TIER_PRICE_PERCENT[_tier.strip()].is_finite() or TIER_PRICE_PERCENT[_tier.strip()] < 0:
        raise ImproperlyConfigured("BERTH_TIER_PRICE_PERCENT: percents must be 0 or more")

STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_secret("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = env_str("STRIPE_API_BASE")  # point the stripe client at a local server

# --------------------------------------------------------------------------- provisioning (workers/)

# Shared Hugging Face cache for pull_model and engines; with HF_HOME set, the Hub's default applies.
HF_CACHE_DIR = None if env_str("HF_HOME") else str(DATA_DIR / "hf-cache")
HF_ENDPOINT = env_str("HF_ENDPOINT")
HF_ETAG_TIMEOUT = env_int("BERTH_HF_ETAG_TIMEOUT", 10, minimum=1)
# Where tenants' LoRA adapters may come from (models_registry.adapters): "hub:" any Hub repo,
# "hub:<org>/" that org's repos, an absolute folder prefix, or an http(s):// URL prefix.
ADAPTER_ALLOWED_SOURCES = env_list("BERTH_ADAPTER_ALLOWED_SOURCES", ["hub:"])
ADAPTER_DIR = DATA_DIR / "adapters"  # fetched adapters, one folder each
NODE_NAME = env_str("BERTH_NODE_NAME")  # node_agent --name default (else the host name)
NODE_RESIDENCY = env_str("BERTH_NODE_RESIDENCY")  # node_agent --residency default (data residency)
NODE_ADDRESS = env_str("BERTH_NODE_ADDRESS", "127.0.0.1")  # engines bind to and are reached at it
CPU_SLOTS = env_int("BERTH_CPU_SLOTS", 2, minimum=0)  # CPU-engine replicas a node agent offers
HEARTBEAT_SECONDS = env_int("BERTH_HEARTBEAT_SECONDS", 5, minimum=1)
# Where vLLM deployments run: "local" (node agents) or "kubernetes" (provisioning/k8s/sync.py).
PROVISIONER = env_str("BERTH_PROVISIONER", "local")
if PROVISIONER not in ("local", "kubernetes"):
    raise ImproperlyConfigured("BERTH_PROVISIONER must be 'local' or 'kubernetes'")
K8S_NAMESPACE = env_str("BERTH_K8S_NAMESPACE", "berth-engines")
K8S_VLLM_IMAGE = env_str("BERTH_K8S_VLLM_IMAGE", "vllm/vllm-openai:v0.33.0")
K8S_BERTH_IMAGE = env_str("BERTH_K8S_BERTH_IMAGE", "berth")  # runs the weights check before vLLM
K8S_CACHE_PVC = env_str("BERTH_K8S_CACHE_PVC", "berth-model-cache")
K8S_ENGINE_SECRET = env_str("BERTH_K8S_ENGINE_SECRET", "berth-engine-key")
K8S_ENGINE_API_KEY = env_secret("BERTH_K8S_ENGINE_API_KEY")
NODE_LOST_SECONDS = env_int("BERTH_NODE_LOST_SECONDS", 30, minimum=2)
WORKER_START_TIMEOUT = env_int("BERTH_WORKER_START_TIMEOUT", 900, minimum=5)
UNHEALTHY_AFTER = env_int("BERTH_UNHEALTHY_AFTER", 3, minimum=1)  # failed /health checks in a row
DRAIN_TIMEOUT = env_int("BERTH_DRAIN_TIMEOUT", 120, minimum=0)
ENGINE_STOP_GRACE = env_int("BERTH_ENGINE_STOP_GRACE", 15, minimum=1)
RESTART_BACKOFF_SECONDS = env_int("BERTH_RESTART_BACKOFF_SECONDS", 5, minimum=0)
RESTART_BACKOFF_MAX = env_int("BERTH_RESTART_BACKOFF_MAX", 300, minimum=0)
SCALE_DOWN_DELAY = env_int("BERTH_SCALE_DOWN_DELAY", 120, minimum=0)
WORKER_LOG_DIR = DATA_DIR / "logs" / "workers"
# Model files are verified against their manifest before an engine starts (integrity.manifest):
# "cached" trusts a node's digest of a file whose size, mtime and ctime are unchanged; "full"
# rehashes every byte at every start (defeats an attacker who can also reset timestamps).
MODEL_VERIFICATION = env_str("BERTH_MODEL_VERIFICATION", "cached")
if MODEL_VERIFICATION not in ("cached", "full"):
    raise ImproperlyConfigured("BERTH_MODEL_VERIFICATION must be 'cached' or 'full'")
MODEL_DIGEST_CACHE = DATA_DIR / "integrity" / "digests.json"
# Test-only: dotted path of a launcher used instead of provisioning.engines.build_launch.
ENGINE_LAUNCHER_OVERRIDE = env_str("BERTH_ENGINE_LAUNCHER_OVERRIDE")

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
