"""``python -m gateway`` (console script ``berth-gateway``): the metering gateway on uvicorn.

The gateway is a program of its own, not a Django command: it reads only its environment
(``gateway/config.py``), so a deployment gives it Redis, the key peppers, the internal token and
its ``BERTH_GATEWAY_*`` options, and no database URL, Django secret or Stripe key. Nothing here
imports Django (``tests/gateway/test_entry_point.py`` holds that, start-up included).

The settings are checked before the server starts, so a gateway that may not run (DEBUG off and no
``BERTH_INTERNAL_TOKEN``, malformed peppers) exits at once with the reason instead of failing in
uvicorn's lifespan.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from gateway.config import GatewaySettings, get_settings

APP = "gateway.app:app"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="berth-gateway",
        description="Run Berth's metering gateway (OpenAI-compatible /v1; no ORM on its request path).",
    )
    parser.add_argument("--host", help="address to bind (default: BERTH_GATEWAY_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: BERTH_GATEWAY_PORT, else 8001)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    parser.add_argument(
        "--grace-seconds",
        type=int,
        help="On SIGTERM, how long in-flight requests may finish before they are cut (and billed as "
        "delivered); default: BERTH_GATEWAY_GRACE_SECONDS, else 30.",
    )
    parser.add_argument("--log-level", help="uvicorn's own log level (default: LOG_LEVEL, else info)")
    return parser.parse_args(argv)


def load_settings() -> GatewaySettings:
    """The gateway's settings, or exit with what is wrong (never the values: they hold secrets)."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(_reason(error) for error in exc.errors())
        sys.stderr.write(f"berth-gateway: cannot start: {problems}\n")
        raise SystemExit(2) from None


def _reason(error: object) -> str:
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("msg", ""))
    location = ".".join(str(part) for part in error.get("loc", ()) if part)
    return f"{location}: {message}" if location else message


def multiprocess_metrics_dir(workers: int) -> str | None:
    """With several server processes, ``/metrics`` aggregates them through a shared directory."""
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    return tempfile.mkdtemp(prefix="berth-gateway-metrics-")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings()
    metrics_dir = multiprocess_metrics_dir(args.workers)
    if metrics_dir is not None:
        # Read by prometheus_client when gateway.metrics is first imported, in every worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    import uvicorn  # after the environment is final: the workers inherit it

    try:
        _serve(uvicorn, args, settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(uvicorn: Any, args: argparse.Namespace, settings: GatewaySettings) -> None:
    uvicorn.run(
        APP,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the gateway writes its own structured access log
        log_level=(args.log_level or settings.log_level).lower(),
        timeout_graceful_shutdown=(
            args.grace_seconds if args.grace_seconds is not None else settings.grace_seconds
        ),
    )


if __name__ == "__main__":
    main()
