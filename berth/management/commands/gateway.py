"""``manage.py gateway``: the old spelling of ``python -m gateway``, kept so existing notes work.

Nothing in Berth starts the gateway this way (``berth/roles.py`` runs ``python -m gateway``). What it
adds is the hand-over ``berth up`` does too: the gateway reads no Django settings, so this passes
on what the control plane resolved here (embedded Redis, development peppers), then replaces itself
with the standalone gateway, arguments unchanged.
"""

import os
import sys

from django.core.management.base import BaseCommand

from berth import roles


class Command(BaseCommand):
    help = "Run the metering gateway (alias of `python -m gateway`; takes the same arguments)."

    def add_arguments(self, parser):
        parser.add_argument(
            "gateway_args", nargs="*", help="passed to `python -m gateway` (see --help there)"
        )

    def run_from_argv(self, argv):
        # manage.py gateway --port 8001 …: every argument belongs to the gateway (--help too).
        self.handle(*argv[2:])

    def handle(self, *args, **options):
        argv = [sys.executable, "-m", "gateway", *args, *options.get("gateway_args", ())]
        env = {**os.environ, **roles.env("gateway")}
        os.execve(sys.executable, argv, env)  # noqa: S606 - replace this process with the gateway
