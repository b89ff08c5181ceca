"""The routing table the gateway reads from Redis (it never queries PostgreSQL).

The layout (``route:<model>`` hashes of READY workers, the ``routes`` set, the invalidation
messages) is the contract's: see ``contract``. A worker leaves its hash before draining starts
(``remove_worker``); ``publish`` rewrites every table from PostgreSQL at the end of each reconcile
pass, so a missed write heals within a pass.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import redis

from berth.redis import get_redis, names
from contract import invalidation
from provisioning.constants import WorkerState

logger = logging.getLogger(__name__)


def entry(worker, model_name: str, node_name: str) -> str:
    return json.dumps(
        {
            "worker_id": str(worker.pk),
            "url": worker.url,
            "api_key": worker.api_key,
            "node": node_name,
            "deployment_id": str(worker.deployment_id),
            "model": model_name,
            "engine": worker.deployment.engine,
        }
    )


def build(workers) -> dict[str, dict[str, str]]:
    """``{model name: {worker id: entry}}`` from workers with ``deployment.model`` and ``node``."""
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for worker in workers:
        if worker.state != WorkerState.READY or not worker.url:
            continue
        model_name = worker.deployment.model.name
        table[model_name][str(worker.pk)] = entry(worker, model_name, worker.node.name if worker.node else "")
    return dict(table)


def publish(table: dict[str, dict[str, str]]) -> bool:
    """Replace every ``route:*`` hash with ``table`` (atomically, in one MULTI)."""
    client = get_redis()
    try:
        previous = client.smembers(names().routes())
        pipe = client.pipeline(transaction=True)
        for model_name in set(previous) | set(table):
            pipe.delete(names().route(model_name))
            if table.get(model_name):
                pipe.hset(names().route(model_name), mapping=table[model_name])
        pipe.delete(names().routes())
        if table:
            pipe.sadd(names().routes(), *table)
        changed = set(previous) ^ set(table) | set(table)
        for model_name in changed:
            pipe.publish(names().invalidate_channel(), invalidation.route(model_name))
        pipe.execute()
    except redis.RedisError:
        logger.exception("could not publish the routing table; the next pass will")
        return False
    return True


def remove_worker(model_name: str, worker_id) -> None:
    try:
        pipe = get_redis().pipeline(transaction=True)
        pipe.hdel(names().route(model_name), str(worker_id))
        pipe.publish(names().invalidate_channel(), invalidation.route(model_name))
        pipe.execute()
    except redis.RedisError:
        logger.exception("could not remove worker %s from routing", worker_id)


def read(model_name: str) -> dict[str, dict]:
    """The routing entries of one model (what the gateway does)."""
    return {k: json.loads(v) for k, v in get_redis().hgetall(names().route(model_name)).items()}


def current_tables(*, exclude_worker_ids: set[str] = frozenset()) -> dict[str, dict[str, str]]:
    """The tables as Redis has them now (raw entries), minus the given workers' entries."""
    client = get_redis()
    tables: dict[str, dict[str, str]] = {}
    for model_name in client.smembers(names().routes()):
        entries = client.hgetall(names().route(model_name))
        kept = {wid: value for wid, value in entries.items() if wid not in exclude_worker_ids}
        if kept:
            tables[model_name] = kept
    return tables
