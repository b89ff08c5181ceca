"""The node agent's side: register the node, heartbeat, and start/watch/stop engine processes.

``manage.py node_agent --name <node>`` runs a Celery worker (``--pool threads``) consuming only
``node.<name>``; ``provisioning.tasks.start_engine``/``stop_engine`` call ``start``/``stop`` here, in
the agent process, so one in-memory table knows every engine this agent owns. Several agents
with different names on one machine behave like several hosts.

No engine outlives its agent: every engine runs in its own process group (stopped with
SIGTERM, then SIGKILL of the whole group after ``ENGINE_STOP_GRACE``), and is spawned from one
long-lived thread with ``PR_SET_PDEATHSIG`` = SIGKILL — Linux sends that signal when the
*thread* that forked the child exits, so spawning from short-lived task threads would kill
engines early.

Test-only hook: ``BERTH_ENGINE_LAUNCHER_OVERRIDE`` (setting ``ENGINE_LAUNCHER_OVERRIDE``) names a
dotted ``module.function`` used instead of ``provisioning.engines.build_launch``; the test suite points
it at ``tests.provisioning.fake_engine.build_launch``. Leave it unset in real deployments.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from audit import trail
from audit.constants import ActorKind
from berth.process import die_with_parent_kill
from provisioning import gpus, lifecycle, probe, routing, verification
from provisioning.constants import (
    HOLDING_STATES,
    TERMINAL_STATES,
    EventKind,
    NodeBackend,
    NodeStatus,
    WorkerState,
)
from provisioning.engines.base import EngineLaunch, EngineSpec
from provisioning.models import Gpu, Node, Worker

logger = logging.getLogger(__name__)


LISTEN_BACKLOG = 2048  # uvicorn's default
LISTEN_POLL_SECONDS = 0.25


def bind_engine_socket(host: str) -> socket.socket:
    """A TCP socket bound to a free port of ``host``, for one engine.

    The agent holds it from the moment the port is chosen: an engine that can serve on an
    inherited socket (``EngineLaunch.pass_fds``) gets it already listening, so no other process
    can take the port in between. An engine that binds itself (``vllm serve``) gets only the
    number; see ``Agent._publish_when_listening`` for that case.
    """
    address = host if host not in ("", "localhost") else "127.0.0.1"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
    except OSError:
        sock.close()
        raise
    return sock


def build_launch(spec: EngineSpec) -> EngineLaunch:
    if settings.ENGINE_LAUNCHER_OVERRIDE:
        return import_string(settings.ENGINE_LAUNCHER_OVERRIDE)(spec)
    from provisioning.engines import build_launch as real

    return real(spec)


def engine_spec(worker: Worker, *, host: str, port: int, listen_fd: int | None = None) -> EngineSpec:
    """The launch description for a worker. No adapter is named here: with ``max_loras`` > 0 the
    engine takes them at run time, loaded by the gateway where requests need them."""
    deployment = worker.deployment
    model = deployment.model
    lora = deployment.max_loras > 0
    return EngineSpec(
        engine=deployment.engine,
        served_name=model.name,
        source=model.source,
        task=model.task,
        host=host,
        port=port,
        listen_fd=listen_fd,
        api_key=worker.api_key,
        gpu_indices=tuple(worker.gpu_indices or ()),
        revision=model.revision or None,
        tensor_parallel_size=model.tensor_parallel_size if deployment.engine == "vllm" else 1,
        max_model_len=model.context_length,
        dtype=model.dtype or None,
        quantization=model.quantization or None,
        download_dir=settings.HF_CACHE_DIR,
        extra_args=tuple(model.engine_args or ()),
        max_loras=deployment.max_loras,
        max_cpu_loras=deployment.max_cpu_loras if lora else None,
        max_lora_rank=deployment.max_lora_rank if lora else None,
        tool_call_parser=(model.tool_call_parser or None) if deployment.engine == "vllm" else None,
        reasoning_parser=(model.reasoning_parser or None) if deployment.engine == "vllm" else None,
    )


# Engines are third-party code that parses tenant input: they get an allow-list of the agent's
# environment, never the control plane's secrets (SECRET_KEY, DATABASE_URL, REDIS_URL,
# BERTH_KEY_PEPPERS, BERTH_INTERNAL_TOKEN, STRIPE_*, cloud credentials...), whatever their names.
# What an engine needs besides this comes from its launcher (``EngineLaunch.env``: the worker's
# API key, thread counts, offline mode) and from the agent (CUDA_VISIBLE_DEVICES).
ENGINE_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",  # CUDA libraries outside the default search path
        "XDG_CACHE_HOME",
    }
)
ENGINE_ENV_PREFIXES = (
    "LC_",  # locale
    "HF_",  # Hugging Face cache and hub settings (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN for gated models)
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "CUDA_",  # device visibility and caches
    "NVIDIA_",
    "NCCL_",  # multi-GPU transport
    "VLLM_",  # vLLM's own settings (VLLM_API_KEY always comes from the launcher)
    "OMP_",  # threads
    "MKL_",
    "TORCH_",  # torch, inductor and triton caches
    "TORCHINDUCTOR_",
    "TRITON_",
)


def engine_environment(environ) -> dict[str, str]:
    """The part of the agent's environment an engine may see."""
    return {
        name: value
        for name, value in environ.items()
        if (name in ENGINE_ENV_NAMES or name.startswith(ENGINE_ENV_PREFIXES)) and name != "VLLM_API_KEY"
    }


@dataclass
class Engine:
    worker_id: str
    process: subprocess.Popen
    log_path: Path
    stopping: bool = False


class Agent:
    """Everything one node agent process owns."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        cpu_slots: int,
        labels: dict | None = None,
        residency: str | None = None,
    ):
        self.name = name
        self.residency = residency  # None: keep the node's label as set in the admin
        self.address = address
        self.cpu_slots = cpu_slots
        self.labels = labels or {}
        self.queue = Node.queue_for(name)
        self.engines: dict[str, Engine] = {}
        self.launching: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._spawn_requests: queue.Queue = queue.Queue()
        self.node: Node | None = None
        self.gpu_source = "cpu"

    # ------------------------------------------------------------------ registration

    def register(self) -> Node:
        inventory = gpus.discover(cpu_slots=self.cpu_slots)
        self.gpu_source = inventory.source
        now = timezone.now()
        with transaction.atomic():
            node, created = Node.objects.select_for_update().get_or_create(
                name=self.name,
                defaults={"address": self.address, "queue": self.queue, "backend": NodeBackend.LOCAL},
            )
            node.address = self.address
            node.queue = self.queue
            node.backend = NodeBackend.LOCAL
            node.cpu_slots = inventory.cpu_slots
            node.labels = {**node.labels, **self.labels, "accelerator": inventory.source}
            residency_before = node.residency
            if self.residency is not None:
                node.residency = self.residency
            node.last_heartbeat = now
            if node.status == NodeStatus.LOST:
                node.status = NodeStatus.READY
            node.save()
            if node.residency != residency_before:
                # Where tenants' data may be processed changed: an audit entry.
                trail.record(
                    action="node.residency_changed",
                    actor_kind=ActorKind.SYSTEM,
                    actor_label=f"node_agent --residency ({self.name})",
                    target=node,
                    summary=f"node {node.name}: residency {node.residency or 'none'} "
                    f"(was {residency_before or 'none'})",
                    before={"residency": residency_before},
                    after={"residency": node.residency},
                )
            self._sync_gpus(node, inventory.gpus)
            # Engines a previous run of this agent started died with it (PDEATHSIG).
            for worker in Worker.objects.filter(node=node, state__in=HOLDING_STATES, pid__isnull=False):
                target = WorkerState.STOPPED if worker.state == WorkerState.DRAINING else WorkerState.FAILED
                lifecycle.transition(
                    worker,
                    target,
                    message=f"node agent {self.name} restarted; its engine is gone",
                    crashed=False,
                )
        logger.info(
            "node %s registered (%s): %d GPU(s), %d CPU slot(s)",
            self.name,
            inventory.source,
            len(inventory.gpus),
            inventory.cpu_slots,
        )
        self.node = node
        return node

    @staticmethod
    def _sync_gpus(node: Node, found) -> None:
        Gpu.objects.filter(node=node).exclude(index__in=[g.index for g in found]).delete()
        for gpu in found:
            Gpu.objects.update_or_create(
                node=node,
                index=gpu.index,
                defaults={
                    "uuid": gpu.uuid,
                    "name": gpu.name,
                    "memory_total_mb": gpu.memory_total_mb,
                    "memory_used_mb": gpu.memory_used_mb,
                    "utilization": gpu.utilization,
                },
            )

    # ------------------------------------------------------------------ background threads

    def start_threads(self) -> None:
        threading.Thread(target=self._spawner, name="engine-spawner", daemon=True).start()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()

    def _spawner(self) -> None:
        while True:
            argv, kwargs, future = self._spawn_requests.get()
            try:
                future.set_result(subprocess.Popen(argv, preexec_fn=die_with_parent_kill, **kwargs))  # noqa: S603, PLW1509
            except Exception as exc:  # reported to the task that asked
                future.set_exception(exc)

    def _spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._spawn_requests.put((argv, kwargs, future))
        return future.result(timeout=60)

    def _heartbeat_loop(self) -> None:
        while not self.stopped.wait(settings.HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception:
                logger.exception("heartbeat failed")
                close_old_connections()
                connection.close()

    def heartbeat(self) -> None:
        now = timezone.now()
        Node.objects.filter(name=self.name).update(last_heartbeat=now)
        Node.objects.filter(name=self.name, status=NodeStatus.LOST).update(status=NodeStatus.READY)
        # Live memory/utilization only comes from NVML; torch (the fallback) gives totals only.
        inventory = gpus.discover(cpu_slots=self.cpu_slots) if self.gpu_source == "nvml" else None
        if inventory and inventory.gpus and self.node is not None:
            for gpu in inventory.gpus:
                Gpu.objects.filter(node=self.node, index=gpu.index).update(
                    memory_used_mb=gpu.memory_used_mb, utilization=gpu.utilization
                )
        self.reap()

    def reap(self) -> None:
        """Stop engines whose worker the control plane has already given up on (e.g. node lost)."""
        with self.lock:
            owned = list(self.engines)
        if not owned:
            return
        alive = {
            str(pk)
            for pk in Worker.objects.filter(pk__in=owned)
            .exclude(state__in=TERMINAL_STATES)
            .values_list("pk", flat=True)
        }
        for worker_id in set(owned) - alive:
            logger.warning("worker %s is finished or gone in the database; stopping its engine", worker_id)
            self._terminate(worker_id)

    # ------------------------------------------------------------------ engines

    def start(self, worker_id: str) -> str:
        worker = Worker.objects.select_related("deployment__model", "node").filter(pk=worker_id).first()
        if worker is None:
            return "unknown worker"
        if worker.node is None or worker.node.name != self.name:
            return "not this node's worker"
        if worker.state != WorkerState.STARTING:
            return f"worker is {worker.state}"
        with self.lock:
            if worker_id in self.engines or worker_id in self.launching:
                return "already running"
            self.launching.add(worker_id)
        try:
            return self._launch(worker)
        finally:
            with self.lock:
                self.launching.discard(worker_id)

    def _launch(self, worker: Worker) -> str:
        worker_id = str(worker.pk)
        # Never serve weights that differ from their manifest; fails the worker with the files' names.
        check = verification.before_start(worker)
        if not check.ok:
            return "model files failed verification"
        listener: socket.socket | None = None
        try:
            listener = bind_engine_socket(self.address)
            port = listener.getsockname()[1]
            launch = build_launch(
                check.pin(engine_spec(worker, host=self.address, port=port, listen_fd=listener.fileno()))
            )
            if listener.fileno() in launch.pass_fds:
                listener.listen(LISTEN_BACKLOG)  # connections queue until the engine accepts them
            else:
                # The engine binds host:port itself; another process may take the port first, which
                # _publish_when_listening detects.
                listener.close()
        except Exception as exc:
            if listener is not None:
                listener.close()
            lifecycle.transition(
                worker, WorkerState.FAILED, message=f"cannot build engine command: {exc}", crashed=True
            )
            return "launch failed"
        log_path = Path(settings.WORKER_LOG_DIR) / f"{worker_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**engine_environment(os.environ), **launch.env}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in worker.gpu_indices or [])
        with open(log_path, "ab") as log, listener:  # the agent's copy of the socket closes here
            log.write(f"--- {timezone.now():%Y-%m-%d %H:%M:%S} starting: {' '.join(launch.argv)}\n".encode())
            log.flush()
            try:
                process = self._spawn(
                    launch.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    cwd=str(settings.BASE_DIR),
                    pass_fds=launch.pass_fds,
                )
            except Exception as exc:
                lifecycle.transition(
                    worker, WorkerState.FAILED, message=f"cannot start engine: {exc}", crashed=True
                )
                return "spawn failed"
        engine = Engine(worker_id=worker_id, process=process, log_path=log_path)
        with self.lock:
            self.engines[worker_id] = engine
        url = f"http://{_url_host(self.address)}:{port}"
        # Conditional: if the worker was drained/stopped while we spawned, stop what we started.
        # The URL comes later, once the port is known to be this engine's (the health probe and
        # the routes only ever see a worker with a URL).
        claimed = Worker.objects.filter(pk=worker_id, state=WorkerState.STARTING).update(
            port=port, url="", pid=process.pid, log_path=str(log_path)
        )
        if not claimed:
            self._terminate(worker_id)
            with self.lock:
                self.engines.pop(worker_id, None)
            return "worker changed state while starting"
        lifecycle.record(
            kind=EventKind.SPAWNED, message=f"pid {process.pid} on {self.name}, {url}", worker=worker
        )
        threading.Thread(
            target=self._watch, args=(engine,), name=f"watch-{worker_id[:8]}", daemon=True
        ).start()
        threading.Thread(
            target=self._publish_when_listening,
            args=(engine, port, url),
            name=f"listen-{worker_id[:8]}",
            daemon=True,
        ).start()
        return "started"

    def _publish_when_listening(self, engine: Engine, port: int, url: str) -> None:
        """Give the worker its URL once every listener on ``port`` belongs to its engine.

        Until then the control plane has nothing to probe: a foreign server that took the port
        before the engine bound it (or shares it through SO_REUSEPORT) never answers a health
        check, never gets marked ready, never receives traffic. The engine then fails to bind
        and exits, or the start times out, and the worker is replaced on another port.
        """
        deadline = time.monotonic() + settings.WORKER_START_TIMEOUT
        warned = False
        try:
            while engine.process.poll() is None and not engine.stopping and time.monotonic() < deadline:
                holder = probe.port_holder(port=port, pid=engine.process.pid)
                if holder == probe.PortHolder.ENGINE:
                    Worker.objects.filter(
                        pk=engine.worker_id, state=WorkerState.STARTING, pid=engine.process.pid
                    ).update(url=url)
                    return
                if holder == probe.PortHolder.FOREIGN and not warned:
                    warned = True
                    logger.warning(
                        "port %s of worker %s is held by another process; its URL stays unpublished",
                        port,
                        engine.worker_id,
                    )
                time.sleep(LISTEN_POLL_SECONDS)
        except Exception:
            logger.exception("could not publish the URL of worker %s", engine.worker_id)
        finally:
            connection.close()

    def _watch(self, engine: Engine) -> None:
        code = engine.process.wait()
        with self.lock:
            if self.engines.get(engine.worker_id) is engine:
                del self.engines[engine.worker_id]
        try:
            worker = Worker.objects.select_related("deployment__model").filter(pk=engine.worker_id).first()
            if worker is None or worker.pid != engine.process.pid:
                return
            message = f"engine exited with code {code}"
            if engine.stopping or worker.state == WorkerState.DRAINING or worker.stop_requested_at:
                lifecycle.transition(worker, WorkerState.STOPPED, message=message, exit_code=code)
            else:
                tail = log_tail(engine.log_path, lines=5)
                if lifecycle.transition(
                    worker,
                    WorkerState.FAILED,
                    message=message + (f"; log tail:\n{tail}" if tail else ""),
                    failure_reason=message,
                    exit_code=code,
                    crashed=True,
                ):
                    # Out of routing now, not at the next reconcile pass.
                    routing.remove_worker(worker.deployment.model.name, worker.pk)
        except Exception:
            logger.exception("could not record the exit of worker %s", engine.worker_id)
        finally:
            connection.close()

    def _terminate(self, worker_id: str) -> bool:
        with self.lock:
            engine = self.engines.get(worker_id)
        if engine is None:
            return False
        engine.stopping = True
        _signal_group(engine.process, signal.SIGTERM)
        try:
            engine.process.wait(timeout=settings.ENGINE_STOP_GRACE)
        except subprocess.TimeoutExpired:
            logger.warning(
                "engine of %s ignored SIGTERM for %ss; killing it", worker_id, settings.ENGINE_STOP_GRACE
            )
        # Whatever is left of the group (engine children) goes too.
        _signal_group(engine.process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            engine.process.wait(timeout=5)
        return True

    def stop(self, worker_id: str) -> str:
        running = self._terminate(worker_id)
        worker = Worker.objects.filter(pk=worker_id).first()
        if worker is not None and worker.state == WorkerState.READY:
            # Not drained first (an explicit stop): it still passes through draining.
            lifecycle.transition(worker, WorkerState.DRAINING, message=f"stop order on {self.name}")
        if worker is not None and worker.state not in TERMINAL_STATES:
            lifecycle.transition(worker, WorkerState.STOPPED, message=f"stopped by node agent {self.name}")
        return "stopped" if running else "was not running"

    def shutdown(self) -> None:
        """The agent is exiting: stop every engine and give up its workers so they move elsewhere."""
        self.stopped.set()
        with self.lock:
            owned = list(self.engines)
        for worker_id in owned:
            self._terminate(worker_id)
            worker = Worker.objects.filter(pk=worker_id).first()
            if worker is not None:
                target = WorkerState.STOPPED if worker.state == WorkerState.DRAINING else WorkerState.FAILED
                lifecycle.transition(worker, target, message=f"node agent {self.name} stopped", crashed=False)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: str | Path, *, lines: int = 200, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of an engine log (what the admin shows)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# The agent of this process (set by ``manage.py node_agent``); None in every other process.
current: Agent | None = None
