"""The reconciler: make Worker rows (actual state) match Deployments (desired state).

One pass, run by a periodic Celery task (``provisioning.tasks.reconcile``) and safe to run twice at
once: the whole pass holds a PostgreSQL advisory lock (a second caller returns at once), and
every state change is a conditional UPDATE (``provisioning.lifecycle.transition``), so a node agent
racing on the same row cannot be overwritten. A pass:

1. marks nodes whose heartbeat is older than ``NODE_LOST_SECONDS`` lost, and fails (or, when
   draining, stops) the workers they held, so they are replaced elsewhere;
2. health-checks starting and ready workers (``GET /health``, concurrently): starting + 200 →
   ready, too slow → failed; ready + ``UNHEALTHY_AFTER`` failures in a row → failed (a hung
   engine; crashed ones are reported at once by their agent);
3. per deployment: fewer live workers than desired → new pending workers (a replacement for a
   crashed one inherits its restart count and waits ``backoff(restart_count)``); more → the
   least useful are retired (``provisioning.operations.retire``: pending ones stop at once, the
   others drain);
4. draining workers leave the routing table first, then are stopped when their engine reports
   no running request (``vllm:num_requests_running``) or ``DRAIN_TIMEOUT`` passes;
5. places pending workers on ready nodes (``provisioning.placement``) and sends ``start_engine`` to
   the node's queue after commit; what does not fit keeps a ``pending_reason``;
6. rewrites the routing table in Redis (``provisioning.routing``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from models_registry.constants import Engine
from models_registry.models import Deployment
from provisioning import dispatch, lifecycle, operations, placement, probe, residency, routing
from provisioning.constants import HOLDING_STATES, LIVE_STATES, EventKind, NodeStatus, WorkerState
from provisioning.models import Gpu, Node, Worker, WorkerEvent

logger = logging.getLogger(__name__)

PROBE_CONCURRENCY = 32
STABLE_SECONDS = 600  # ready this long before crashing: the restart backoff starts over
RECONCILE_LOCK = 0x62657274_01  # "bert" + 1: pg advisory lock ids are bigints
AUTOSCALE_LOCK = 0x62657274_02


@contextlib.contextmanager
def advisory_lock(key: int):
    """Session-level ``pg_try_advisory_lock``: yields False when another process holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def backoff_seconds(restart_count: int) -> float:
    if restart_count <= 0:
        return 0.0
    return float(
        min(settings.RESTART_BACKOFF_MAX, settings.RESTART_BACKOFF_SECONDS * 2 ** (restart_count - 1))
    )


def reconcile(*, now: datetime | None = None) -> dict[str, int] | None:
    """One reconcile pass; None when another pass is running."""
    with advisory_lock(RECONCILE_LOCK) as acquired:
        if not acquired:
            return None
        return _pass(now or timezone.now())


def _pass(now: datetime) -> dict[str, int]:
    stats: Counter = Counter()
    nodes = {node.pk: node for node in Node.objects.all()}
    _mark_lost_nodes(nodes, now, stats)
    workers = list(
        Worker.objects.filter(state__in=[*LIVE_STATES, WorkerState.DRAINING]).select_related(
            "deployment__model", "node"
        )
    )
    _check_health(workers, now, stats)
    deployments = list(Deployment.objects.select_related("model"))
    on_kubernetes = settings.PROVISIONER == "kubernetes"
    # On Kubernetes, vLLM deployments are groups in the cluster (provisioning/k8s/sync.py); CPU
    # deployments still run on node agents.
    local = [d for d in deployments if not (on_kubernetes and d.engine == Engine.VLLM)]
    residency.retire_misplaced(local, workers, nodes, stats)
    _replace_failed(local, workers, now, stats)
    _converge(local, workers, now, stats)
    _progress_draining(workers, nodes, now, stats)
    _place_pending(workers, nodes, local, now, stats)
    table = routing.build(workers)
    if on_kubernetes:
        from provisioning.k8s import sync as kube

        try:
            table.update(kube.sync(deployments, stats))
        except Exception:  # the local half of the pass must still publish its routes
            logger.exception("Kubernetes sync failed; its routes stay as they were this pass")
            stats["k8s_errors"] += 1
            local_ids = {str(pk) for pk in Worker.objects.values_list("pk", flat=True)}
            for model_name, entries in routing.current_tables(exclude_worker_ids=local_ids).items():
                table.setdefault(model_name, {}).update(entries)
    routing.publish(table)
    return dict(stats)


# --------------------------------------------------------------------------- nodes


def _mark_lost_nodes(nodes: dict, now: datetime, stats: Counter) -> None:
    cutoff = now - timedelta(seconds=settings.NODE_LOST_SECONDS)
    for node in nodes.values():
        stale = node.last_heartbeat is None or node.last_heartbeat < cutoff
        if node.status == NodeStatus.READY and stale:
            if Node.objects.filter(
                pk=node.pk, status=NodeStatus.READY, last_heartbeat=node.last_heartbeat
            ).update(status=NodeStatus.LOST):
                node.status = NodeStatus.LOST
                stats["nodes_lost"] += 1
                logger.warning("node %s lost (last heartbeat %s)", node.name, node.last_heartbeat)
        # A cordoned node that stops heartbeating keeps its status, but its workers still move.
        if node.status == NodeStatus.LOST or (node.status == NodeStatus.CORDONED and stale):
            for worker in Worker.objects.filter(node=node, state__in=HOLDING_STATES).select_related(
                "deployment__model"
            ):
                since = f"{node.last_heartbeat:%H:%M:%S}" if node.last_heartbeat else "ever"
                message = f"node {node.name} lost (no heartbeat since {since})"
                if worker.state == WorkerState.DRAINING:
                    lifecycle.transition(worker, WorkerState.STOPPED, message=message)
                elif lifecycle.transition(worker, WorkerState.FAILED, message=message, crashed=False):
                    lifecycle.record(kind=EventKind.NODE_LOST, message=message, worker=worker)
                    stats["failed_node_lost"] += 1


# --------------------------------------------------------------------------- starting → ready


def _probe_health(workers: list[Worker]) -> dict:
    """``{worker id: healthy}`` for starting/ready workers with a URL, checked concurrently."""
    targets = [w for w in workers if w.state in (WorkerState.STARTING, WorkerState.READY) and w.url]
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBE_CONCURRENCY, len(targets))) as pool:
        results = pool.map(lambda w: probe.health(w.url, api_key=w.api_key), targets)
        return {w.pk: ok for w, ok in zip(targets, results, strict=True)}


def _check_health(workers: list[Worker], now: datetime, stats: Counter) -> None:
    """Starting: healthy → ready, too slow → failed. Ready: repeated failures → failed."""
    timeout = timedelta(seconds=settings.WORKER_START_TIMEOUT)
    healthy = _probe_health(workers)
    for worker in workers:
        ok = healthy.get(worker.pk, False)
        if worker.state == WorkerState.STARTING:
            if ok:
                if lifecycle.transition(worker, WorkerState.READY, message=f"healthy at {worker.url}"):
                    stats["ready"] += 1
            elif worker.placed_at and now - worker.placed_at > timeout:
                _fail_and_stop(worker, f"not healthy within {settings.WORKER_START_TIMEOUT}s", stats)
        elif worker.state == WorkerState.READY and worker.url:
            failures = 0 if ok else worker.health_failures + 1
            if failures >= settings.UNHEALTHY_AFTER:
                _fail_and_stop(worker, f"/health failed {failures} times in a row", stats)
            elif failures != worker.health_failures:
                Worker.objects.filter(pk=worker.pk).update(health_failures=failures)
                worker.health_failures = failures


def _fail_and_stop(worker: Worker, message: str, stats: Counter) -> None:
    if lifecycle.transition(worker, WorkerState.FAILED, message=message, crashed=True):
        routing.remove_worker(worker.deployment.model.name, worker.pk)
        if worker.node_id:
            dispatch.send(dispatch.STOP_TASK, worker.pk, worker.node.queue)
        stats["failed_unhealthy"] += 1


# --------------------------------------------------------------------------- desired vs live


def _new_worker(deployment: Deployment, now: datetime, *, restart_count: int = 0, start_after=None) -> Worker:
    return Worker(
        deployment=deployment,
        api_key=secrets.token_urlsafe(32),
        restart_count=restart_count,
        start_after=start_after,
        created_at=now,
        state_changed_at=now,
    )


def _live_by_deployment(workers: list[Worker]) -> dict:
    grouped = defaultdict(list)
    for worker in workers:
        if worker.state in LIVE_STATES:
            grouped[worker.deployment_id].append(worker)
    return grouped


def _replace_failed(deployments, workers: list[Worker], now: datetime, stats: Counter) -> None:
    """A failed worker still wanted by its deployment gets one replacement, after a backoff."""
    by_id = {d.pk: d for d in deployments}
    failed = list(Worker.objects.filter(state=WorkerState.FAILED, replaced=False).order_by("finished_at"))
    # An agent may have failed some of them since ``workers`` was read: do not count them live.
    failed_ids = {dead.pk for dead in failed}
    for worker in workers:
        if worker.pk in failed_ids:
            worker.state = WorkerState.FAILED
    live = _live_by_deployment(workers)
    for dead in failed:
        deployment = by_id.get(dead.deployment_id)
        claimed = Worker.objects.filter(pk=dead.pk, replaced=False).update(replaced=True)
        if not claimed or deployment is None:
            continue
        if len(live[deployment.pk]) >= deployment.desired_replicas:
            continue  # scaled down meanwhile: nothing to replace
        restart_count = dead.restart_count + 1 if dead.crashed else dead.restart_count
        if dead.crashed and _ran_long(dead):
            restart_count = 1  # a crash after a long healthy run is not a crash loop
        delay = backoff_seconds(restart_count) if dead.crashed else 0.0
        finished = dead.finished_at or now
        replacement = _new_worker(
            deployment,
            now,
            restart_count=restart_count,
            start_after=finished + timedelta(seconds=delay) if delay else None,
        )
        with transaction.atomic():
            replacement.save()
            lifecycle.record(
                kind=EventKind.REPLACED,
                message=f"replaces {dead.pk} ({dead.failure_reason or 'failed'}); restart #{restart_count}"
                + (f", backoff {delay:.0f}s" if delay else ""),
                worker=replacement,
            )
        replacement.deployment = deployment
        workers.append(replacement)
        live[deployment.pk].append(replacement)
        stats["replaced"] += 1


def _ran_long(worker: Worker) -> bool:
    if not (worker.ready_at and worker.finished_at):
        return False
    return (worker.finished_at - worker.ready_at).total_seconds() >= STABLE_SECONDS


def _converge(deployments, workers: list[Worker], now: datetime, stats: Counter) -> None:
    live = _live_by_deployment(workers)
    created: list[Worker] = []
    for deployment in deployments:
        current = live[deployment.pk]
        missing = deployment.desired_replicas - len(current)
        for _ in range(max(0, missing)):
            worker = _new_worker(deployment, now)
            worker.deployment = deployment
            created.append(worker)
        if missing < 0:
            # Remove the least useful first: pending, then starting, then the newest ready.
            rank = {WorkerState.PENDING: 0, WorkerState.STARTING: 1, WorkerState.READY: 2}
            surplus = sorted(current, key=lambda w: (rank[w.state], -w.created_at.timestamp()))[:-missing]
            for worker in surplus:
                _remove(worker, stats, message=f"scaled down to {deployment.desired_replicas}")
    if created:
        with transaction.atomic():
            Worker.objects.bulk_create(created)
            WorkerEvent.objects.bulk_create(
                [
                    WorkerEvent(
                        worker=w,
                        deployment_id=w.deployment_id,
                        kind=EventKind.CREATED,
                        message="replica wanted",
                        at=now,
                    )
                    for w in created
                ]
            )
        workers.extend(created)
        stats["created"] += len(created)


def _remove(worker: Worker, stats: Counter, *, message: str) -> None:
    """Retire a surplus worker (scale-down): it is not replaced, desired replicas dropped."""
    stopped_at_once = worker.state == WorkerState.PENDING
    if operations.retire(worker=worker, actor=None, reason=message):
        stats["stopped" if stopped_at_once else "draining"] += 1


# --------------------------------------------------------------------------- draining → stopped


def _progress_draining(workers: list[Worker], nodes: dict, now: datetime, stats: Counter) -> None:
    resend_after = timedelta(seconds=settings.ENGINE_STOP_GRACE + 30)
    for worker in workers:
        if worker.state != WorkerState.DRAINING:
            continue
        node = nodes.get(worker.node_id)
        if node is None:
            if lifecycle.transition(worker, WorkerState.STOPPED, message="no node to stop it on"):
                stats["stopped"] += 1
            continue
        if worker.stop_requested_at and now - worker.stop_requested_at < resend_after:
            continue  # the agent has it; ask again only if it seems to have missed the order
        idle = True
        if worker.url:
            load = probe.load(worker.url, api_key=worker.api_key)
            idle = load is None or load.total == 0
        timed_out = now - (worker.drain_started_at or now) >= timedelta(seconds=settings.DRAIN_TIMEOUT)
        if idle or timed_out:
            Worker.objects.filter(pk=worker.pk).update(stop_requested_at=now)
            worker.stop_requested_at = now
            dispatch.send(dispatch.STOP_TASK, worker.pk, node.queue)
            stats["stop_sent"] += 1


# --------------------------------------------------------------------------- placement


def capacity(nodes: dict, workers: list[Worker]) -> list[placement.NodeCapacity]:
    """Free GPUs and CPU slots of ready nodes, given the workers that hold resources."""
    used_gpus: dict = defaultdict(set)
    used_slots: dict = defaultdict(set)
    for worker in workers:
        if worker.state in HOLDING_STATES and worker.node_id:
            used_gpus[worker.node_id].update(worker.gpu_indices or [])
            if worker.cpu_slot is not None:
                used_slots[worker.node_id].add(worker.cpu_slot)
    gpus_by_node: dict = defaultdict(dict)
    for node_id, index, memory in Gpu.objects.values_list("node_id", "index", "memory_total_mb"):
        gpus_by_node[node_id][index] = memory
    snapshot = []
    for node in nodes.values():
        if node.status != NodeStatus.READY:
            continue
        all_gpus = gpus_by_node[node.pk]
        snapshot.append(
            placement.NodeCapacity(
                node_id=node.pk,
                name=node.name,
                labels=node.labels or {},
                free_gpus={i: m for i, m in all_gpus.items() if i not in used_gpus[node.pk]},
                total_gpus=len(all_gpus),
                free_cpu_slots=[s for s in range(node.cpu_slots) if s not in used_slots[node.pk]],
                cpu_slots=node.cpu_slots,
                residency=node.residency,
            )
        )
    return snapshot


def request_for(deployment: Deployment) -> placement.Request:
    residencies = residency.required_residencies(deployment)
    if deployment.engine == Engine.CPU:
        return placement.Request(
            gpus=0, node_selector=deployment.node_selector or {}, residencies=residencies
        )
    return placement.Request(
        gpus=deployment.gpus_per_replica,
        memory_mb_per_gpu=deployment.model.gpu_memory_mb_per_gpu,
        node_selector=deployment.node_selector or {},
        residencies=residencies,
    )


def _place_pending(workers: list[Worker], nodes: dict, deployments, now: datetime, stats: Counter) -> None:
    pending = [w for w in workers if w.state == WorkerState.PENDING]
    if not pending:
        return
    snapshot = capacity(nodes, workers)
    pending.sort(key=lambda w: (-(w.deployment.gpus_per_replica), w.created_at))
    for worker in pending:
        if worker.start_after and worker.start_after > now:
            _set_pending_reason(worker, f"restart backoff until {worker.start_after:%H:%M:%S} UTC")
            continue
        where = placement.place(request_for(worker.deployment), snapshot)
        if isinstance(where, placement.Unplaceable):
            _set_pending_reason(worker, where.reason)
            stats["unplaceable"] += 1
            continue
        node = nodes[where.node_id]
        ok = lifecycle.transition(
            worker,
            WorkerState.STARTING,
            message=f"placed on {node.name}"
            + (f" GPUs {list(where.gpu_indices)}" if where.gpu_indices else f" CPU slot {where.cpu_slot}"),
            node_id=node.pk,
            gpu_indices=list(where.gpu_indices),
            cpu_slot=where.cpu_slot,
        )
        if ok:
            worker.node = node
            # Committed already (or at the caller's commit): the agent never sees an unplaced row.
            dispatch.start_on_commit(worker.pk, node.queue)
            placement.take(snapshot, where)
            stats["placed"] += 1


def _set_pending_reason(worker: Worker, reason: str) -> None:
    if worker.pending_reason != reason:
        Worker.objects.filter(pk=worker.pk, state=WorkerState.PENDING).update(pending_reason=reason)
        if not worker.pending_reason:
            lifecycle.record(kind=EventKind.PENDING, message=reason, worker=worker)
        worker.pending_reason = reason
