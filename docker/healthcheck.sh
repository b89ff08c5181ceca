#!/bin/sh
# Container health: HTTP roles answer /healthz (the usage consumer on its metrics port: 200 while
# its loop turns); Celery roles answer a ping over the broker.
set -eu
role="$(cat /proc/1/cmdline | tr '\0' ' ')"
case "$role" in
  *consume_usage*) url="http://127.0.0.1:${BERTH_USAGE_METRICS_PORT:-9102}/healthz" ;;
  *berth.asgi*) url="http://127.0.0.1:${BERTH_WEB_PORT:-8000}/healthz" ;;
  *gateway*) url="http://127.0.0.1:${BERTH_GATEWAY_PORT:-8001}/healthz" ;;
  *"berth worker"*) exec celery -A berth inspect ping -d "control@$(hostname)" --timeout 5 >/dev/null ;;
  # Node agents heartbeat to the control plane, which marks a silent node lost and reschedules.
  *) exit 0 ;;
esac
exec python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('$url', timeout=4).status == 200 else 1)"
