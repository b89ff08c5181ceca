"""Reconciler benchmark: 100 nodes × 8 GPUs and 1,000 workers in a real PostgreSQL.

    python bench/reconcile.py [--nodes 100] [--steady-passes 10]

It creates a scratch database next to the configured one (``berth_bench_<pid>``), migrates it,
builds the fleet, runs reconcile passes and drops the database at the end (also on errors).
Redis keys go under a scratch prefix and are deleted. Only the two seams to the outside are
stubbed: ``provisioning.dispatch.send`` (start/stop orders to node agents) and ``provisioning.probe``
(engine health and load); between passes the script plays the agents (gives started workers a
URL, marks stopped ones stopped) outside the timed region. Prints seconds and SQL queries per pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402


def build_fleet(*, nodes: int, gpus_per_node: int) -> None:
    from models_registry.constants import Engine
    from models_registry.models import Deployment, Model
    from provisioning.models import Gpu, Node

    now = timezone.now()
    node_rows = Node.objects.bulk_create(
        [
            Node(
                name=f"n{i:03d}",
                address=f"10.0.{i // 250}.{i % 250}",
                queue=f"node.n{i:03d}",
                cpu_slots=4,
                last_heartbeat=now,
            )
            for i in range(nodes)
        ]
    )
    Gpu.objects.bulk_create(
        [
            Gpu(node=n, index=g, name="H100", memory_total_mb=81_920)
            for n in node_rows
            for g in range(gpus_per_node)
        ]
    )
    # 1,000 replicas (with 100 nodes): 50 × 12 one-GPU, 10 × 10 two-GPU (TP=2), 30 × 10 CPU.
    scale = nodes / 100
    plan = [(50, 1, 12, Engine.VLLM), (10, 2, 10, Engine.VLLM), (30, 1, 10, Engine.CPU)]
    for group, (count, tp, replicas, engine) in enumerate(plan):
        for i in range(max(1, round(count * scale))):
            model = Model.objects.create(
                name=f"m{group}-{i}",
                source="/models/x",
                source_kind="local",
                tensor_parallel_size=tp,
                gpu_memory_gb=40 * tp,
            )
            Deployment.objects.create(
                model=model, engine=engine, min_replicas=0, max_replicas=replicas, desired_replicas=replicas
            )


def play_agents() -> None:
    """What node agents would have done since the last pass (not timed)."""

    from provisioning.constants import WorkerState
    from provisioning.models import Node, Worker

    Worker.objects.filter(state=WorkerState.STARTING, url="").update(url="http://engine.sim:8000", pid=1)
    Worker.objects.filter(state=WorkerState.DRAINING, stop_requested_at__isnull=False).update(
        state=WorkerState.STOPPED, finished_at=timezone.now()
    )
    Node.objects.exclude(name__startswith="lost").update(last_heartbeat=timezone.now())


def run_pass(samples: list, sent: list) -> dict:
    from provisioning import reconciler

    count = [0]

    def counter(execute, sql, params, many, context):
        count[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        stats = reconciler.reconcile()
        elapsed = time.perf_counter() - started
    samples.append((elapsed, count[0]))
    play_agents()
    return stats or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--steady-passes", type=int, default=10)
    args = parser.parse_args()

    scratch = f"berth_bench_{os.getpid()}"
    original = connection.settings_dict["NAME"]
    connection.ensure_connection()
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{scratch}"')
    connection.close()
    connection.settings_dict["NAME"] = scratch
    settings.REDIS_PREFIX = f"bench{os.getpid()}:"

    from berth.redis import get_redis
    from provisioning import dispatch, probe

    sent: list = []
    dispatch.send = lambda task, worker_id, queue: sent.append((task, worker_id, queue))
    probe.health = lambda url, **kwargs: True
    probe.load = lambda url, **kwargs: probe.Load(running=0.0, waiting=0.0)

    rows = []
    try:
        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        build_fleet(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
        setup_s = time.perf_counter() - t0

        from models_registry.models import Deployment
        from provisioning.constants import WorkerState
        from provisioning.models import Node, Worker

        def phase(name: str, passes: int, before=None) -> None:
            samples: list = []
            sent.clear()
            for _ in range(passes):
                if before:
                    before()
                run_pass(samples, sent)
            times = [s for s, _ in samples]
            queries = [q for _, q in samples]
            rows.append(
                (
                    name,
                    passes,
                    statistics.median(times),
                    max(times),
                    statistics.median(queries),
                    max(queries),
                    len(sent),
                    Worker.objects.filter(state=WorkerState.READY).count(),
                    Worker.objects.filter(state=WorkerState.PENDING).count(),
                )
            )

        phase("create + place 1,000 replicas", 1)
        phase("health checks: starting → ready", 1)
        phase("steady state (nothing to do)", args.steady_passes)

        def scale_down() -> None:
            for deployment in Deployment.objects.filter(model__name__startswith="m0-")[:25]:
                Deployment.objects.filter(pk=deployment.pk).update(
                    desired_replicas=deployment.desired_replicas - 4
                )

        phase("scale 25 deployments down by 4: drain + stop", 1, scale_down)
        phase("after the stops", 1)

        def lose_nodes() -> None:
            old = timezone.now() - timedelta(seconds=settings.NODE_LOST_SECONDS + 60)
            names = list(Node.objects.order_by("name").values_list("name", flat=True)[:5])
            for name in names:
                Node.objects.filter(name=name).update(name=f"lost-{name}", last_heartbeat=old)

        phase("5 nodes lost: fail + reschedule", 1, lose_nodes)
        phase("rescheduled → ready", 1)
        phase("steady state again", args.steady_passes)
        total_workers = Worker.objects.count()
    finally:
        connection.close()
        connection.settings_dict["NAME"] = original
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        connection.close()
        client = get_redis()
        for key in client.scan_iter(match=f"{settings.REDIS_PREFIX}*", count=1000):
            client.delete(key)

    print(
        f"\nfleet: {args.nodes} nodes × {args.gpus_per_node} GPUs (+4 CPU slots each); setup {setup_s:.1f}s;"
    )
    print(f"{total_workers} worker rows at the end (including stopped/failed history)\n")
    header = f"{'phase':<48} {'passes':>6} {'p50 s':>8} {'max s':>8} {'q p50':>7} {'q max':>7} {'orders':>7} {'ready':>6} {'pending':>7}"
    print(header)
    print("-" * len(header))
    for name, passes, p50, mx, qp50, qmax, orders, ready, pending in rows:
        print(
            f"{name:<48} {passes:>6} {p50:>8.3f} {mx:>8.3f} {qp50:>7.0f} {qmax:>7} {orders:>7} {ready:>6} {pending:>7}"
        )


if __name__ == "__main__":
    main()
