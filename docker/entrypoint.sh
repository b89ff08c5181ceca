#!/bin/sh
# Berth container entrypoint: the first argument names the role. The roles, and what each runs,
# are berth/roles.py's list (tests/docker/test_docker.py holds this file, compose and the
# Kubernetes manifests to it). It also runs outside a container: it works from the repository it
# sits in and runs `python` (or $BERTH_PYTHON) from PATH, as tests/deploy/test_topology.py does.
set -eu
cd "$(dirname "$0")/.."
role="${1:-web}"
python="${BERTH_PYTHON:-python}"
# X-Forwarded-* are believed only from these proxies (comma-separated addresses or networks).
trusted="${BERTH_TRUSTED_PROXIES:-127.0.0.1}"
export BERTH_ROLE="$role"
case "$role" in
  web)
    exec "$python" -m uvicorn berth.asgi:application --host "${BERTH_WEB_HOST:-0.0.0.0}" --port "${BERTH_WEB_PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" --lifespan off --proxy-headers \
      --forwarded-allow-ips "$trusted" --timeout-graceful-shutdown 20 ;;
  gateway)
    # The gateway is its own program (no Django): FORWARDED_ALLOW_IPS is read by its uvicorn.
    export FORWARDED_ALLOW_IPS="$trusted"
    exec "$python" -m gateway --host "${BERTH_GATEWAY_HOST:-0.0.0.0}" \
      --port "${BERTH_GATEWAY_PORT:-8001}" --workers "${GATEWAY_WORKERS:-2}" ;;
  usage)
    exec "$python" manage.py consume_usage --metrics-port "${BERTH_USAGE_METRICS_PORT:-9102}" ;;
  worker)
    exec "$python" -m celery -A berth worker -l "${LOG_LEVEL:-INFO}" --concurrency "${CELERY_CONCURRENCY:-4}" -n "control@%h" ;;
  beat)
    mkdir -p "${BERTH_DATA_DIR:-/data}"  # a volume in the image; maybe not yet there elsewhere
    exec "$python" -m celery -A berth beat -l "${LOG_LEVEL:-INFO}" -s "${BERTH_DATA_DIR:-/data}/celerybeat-schedule" ;;
  agent)
    exec "$python" manage.py node_agent --name "${BERTH_NODE_NAME:-$(hostname)}" ;;
  migrate)
    exec "$python" manage.py migrate --noinput ;;
  manage)
    shift
    exec "$python" manage.py "$@" ;;
  *)
    exec "$@" ;;
esac
