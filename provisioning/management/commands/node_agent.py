"""``manage.py node_agent --name <node>``: the node agent (a Celery worker on the node's queue).

It registers the node and its GPUs (or CPU slots), heartbeats every ``BERTH_HEARTBEAT_SECONDS``,
and runs ``start_engine``/``stop_engine`` tasks from ``node.<name>`` in a thread pool inside this
process (see ``provisioning.agent``). On SIGTERM/SIGINT Celery finishes its current tasks and the
agent stops every engine it started; on SIGKILL the engines die with it (PDEATHSIG).
"""

from __future__ import annotations

import json
import socket

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from provisioning import agent as agent_module
from tenants.models import residency_validator


class Command(BaseCommand):
    help = "Run a node agent: register this host's GPUs/CPU slots and run engines for the reconciler."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=settings.NODE_NAME or socket.gethostname())
        parser.add_argument("--address", default=settings.NODE_ADDRESS, help="Host/IP engines bind to.")
        parser.add_argument("--cpu-slots", type=int, default=settings.CPU_SLOTS)
        parser.add_argument("--labels", default="{}", help='JSON object, e.g. {"zone": "a"}.')
        parser.add_argument(
            "--residency",
            default=settings.NODE_RESIDENCY or None,
            help="Data-residency label of this node (e.g. eu); default: keep the one set in the admin.",
        )
        parser.add_argument("--concurrency", type=int, default=4, help="Tasks run at once (threads).")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args, **options):
        try:
            labels = json.loads(options["labels"])
        except ValueError as exc:
            raise CommandError(f"--labels must be a JSON object: {exc}") from exc
        if not isinstance(labels, dict) or options["cpu_slots"] < 0:
            raise CommandError("--labels must be a JSON object and --cpu-slots >= 0")
        if options["residency"] is not None:
            try:
                residency_validator(options["residency"])
            except ValidationError as exc:
                raise CommandError(f"--residency: {exc.messages[0]}") from exc
        agent = agent_module.Agent(
            name=options["name"],
            address=options["address"],
            cpu_slots=options["cpu_slots"],
            labels=labels,
            residency=options["residency"],
        )
        agent.register()
        agent_module.current = agent
        agent.start_threads()
        from berth.celery import app

        try:
            app.worker_main(
                [
                    "worker",
                    "-Q",
                    agent.queue,
                    "-n",
                    f"agent-{agent.name}@%h",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(options["concurrency"]),
                    "-l",
                    options["loglevel"],
                    "--without-gossip",
                    "--without-mingle",
                ]
            )
        finally:
            agent.shutdown()
