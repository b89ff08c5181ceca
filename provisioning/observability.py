"""What Prometheus reads from the control plane.

* ``GET /internal/prometheus/engines`` — Prometheus ``http_sd`` targets: every ready worker's
  engine, labelled with model, deployment, node and worker, so its vLLM ``/metrics`` (queue depth,
  KV-cache use, tokens) are scraped without anyone listing addresses by hand.
* ``GET /internal/metrics`` — the GPU pool as gauges: ``berth_pool_gpus`` and
  ``berth_pool_gpus_in_use`` per node, ``berth_pool_cpu_slots`` / ``_in_use``,
  ``berth_workers`` per deployment and state, and ``berth_model_verification_failures_total`` per
  model (engine starts refused because the files did not match the manifest, counted from the
  append-only ``integrity`` worker events).

Both are for the private network and require ``Authorization: Bearer <BERTH_INTERNAL_TOKEN>``
(Prometheus: ``authorization: {credentials_file: …}``). Settings refuse to start without the token
when DEBUG is off, and even then a process without one answers 401: only a DEBUG start-up
(``manage.py up`` on loopback) serves them open.
"""

from __future__ import annotations

import hmac
from collections import Counter
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from provisioning.constants import TERMINAL_STATES, EventKind, WorkerState
from provisioning.models import Gpu, Node, Worker, WorkerEvent


def _authorized(request) -> bool:
    token = settings.INTERNAL_TOKEN
    if not token:
        return settings.INTERNAL_OPEN_WITHOUT_TOKEN
    header = request.headers.get("Authorization", "")
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def _denied() -> HttpResponse:
    return HttpResponse("unauthorized\n", status=401, content_type="text/plain")


@never_cache
@require_GET
def engine_targets(request):
    if not _authorized(request):
        return _denied()
    groups = []
    workers = (
        Worker.objects.filter(state=WorkerState.READY)
        .exclude(url="")
        .select_related("deployment__model", "node")
    )
    for worker in workers:
        groups.append(
            {
                "targets": [urlsplit(worker.url).netloc],
                "labels": {
                    "model": worker.deployment.model.name,
                    "deployment": str(worker.deployment_id),
                    "node": worker.node.name if worker.node else "",
                    "worker": str(worker.pk),
                },
            }
        )
    return JsonResponse(groups, safe=False)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@never_cache
@require_GET
def pool_metrics(request):
    if not _authorized(request):
        return _denied()
    lines = [
        "# HELP berth_pool_gpus GPUs registered per node.",
        "# TYPE berth_pool_gpus gauge",
    ]
    # Draining workers too: their engines still serve in-flight requests and export metrics.
    live = list(Worker.objects.exclude(state__in=TERMINAL_STATES).select_related("node", "deployment__model"))
    gpus_in_use: Counter[str] = Counter()
    slots_in_use: Counter[str] = Counter()
    for worker in live:
        if worker.node is None:
            continue
        gpus_in_use[worker.node.name] += len(worker.gpu_indices or [])
        if worker.cpu_slot is not None:
            slots_in_use[worker.node.name] += 1
    gpu_counts = Counter(Gpu.objects.values_list("node__name", flat=True))
    nodes = list(Node.objects.all())
    for node in nodes:
        lines.append(
            f'berth_pool_gpus{{node="{_escape(node.name)}",status="{node.status}"}} {gpu_counts[node.name]}'
        )
    lines += [
        "# HELP berth_pool_gpus_in_use GPUs held by live workers.",
        "# TYPE berth_pool_gpus_in_use gauge",
    ]
    lines += [f'berth_pool_gpus_in_use{{node="{_escape(n.name)}"}} {gpus_in_use[n.name]}' for n in nodes]
    lines += ["# HELP berth_pool_cpu_slots CPU-engine slots per node.", "# TYPE berth_pool_cpu_slots gauge"]
    lines += [f'berth_pool_cpu_slots{{node="{_escape(n.name)}"}} {n.cpu_slots}' for n in nodes]
    lines += [
        "# HELP berth_pool_cpu_slots_in_use CPU slots held by live workers.",
        "# TYPE berth_pool_cpu_slots_in_use gauge",
    ]
    lines += [
        f'berth_pool_cpu_slots_in_use{{node="{_escape(n.name)}"}} {slots_in_use[n.name]}' for n in nodes
    ]
    lines += ["# HELP berth_workers Workers per model and state.", "# TYPE berth_workers gauge"]
    states = Counter((w.deployment.model.name, w.state) for w in live)
    for (model, state), count in sorted(states.items()):
        lines.append(f'berth_workers{{model="{_escape(model)}",state="{state}"}} {count}')
    lines += [
        "# HELP berth_model_verification_failures_total Engine starts refused: files did not match the manifest.",
        "# TYPE berth_model_verification_failures_total counter",
    ]
    failures = Counter(
        WorkerEvent.objects.filter(kind=EventKind.INTEGRITY).values_list("deployment__model__name", flat=True)
    )
    for model, count in sorted(failures.items()):
        lines.append(f'berth_model_verification_failures_total{{model="{_escape(model or "")}"}} {count}')
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
