#!/bin/sh
# Berth container entrypoint: the first argument names the role.
set -eu
role="${1:-web}"
case "$role" in
  web)
    exec uvicorn berth.asgi:application --host "${BERTH_WEB_HOST:-0.0.0.0}" --port "${BERTH_WEB_PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" --lifespan off --proxy-headers \
      --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-*}" --timeout-graceful-shutdown 20 ;;
  gateway)
    exec python manage.py gateway --host "${BERTH_GATEWAY_HOST:-0.0.0.0}" --port "${BERTH_GATEWAY_PORT:-8001}" \
      --workers "${GATEWAY_WORKERS:-2}" ;;
  worker)
    exec celery -A berth worker -l "${LOG_LEVEL:-INFO}" --concurrency "${CELERY_CONCURRENCY:-4}" -n "control@%h" ;;
  beat)
    exec celery -A berth beat -l "${LOG_LEVEL:-INFO}" -s "${BERTH_DATA_DIR:-/data}/celerybeat-schedule" ;;
  agent)
    exec python manage.py node_agent --name "${BERTH_NODE_NAME:-$(hostname)}" ;;
  migrate)
    exec python manage.py migrate --noinput ;;
  manage)
    shift
    exec python manage.py "$@" ;;
  *)
    exec "$@" ;;
esac
