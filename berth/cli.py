"""``berth``: one command for every process of the platform, from any directory after ``pip install``.

``berth up`` runs everything on this machine, ``berth gateway`` the gateway alone, ``berth agent``
a node agent; any other word is the Django management command of that name (``berth migrate``,
``berth createsuperuser``; ``berth help`` lists them). ``manage.py`` keeps working, but needs a
checkout and its directory; this needs neither, because it names the settings module itself.

``berth gateway`` hands over to ``gateway.__main__`` before anything imports Django: the gateway
reads only its own settings, and a gateway container holds no database or Stripe secrets. That is
why this module imports nothing but the standard library at the top, and why the ``berth``
package must not import Django (or Celery, which imports it) when it is itself imported.
"""

from __future__ import annotations

import os
import sys

SETTINGS_MODULE = "berth.settings"
# Words of our own; every other word is a Django management command.
ALIASES = {"agent": "node_agent"}
HELP_WORDS = {"help", "--help", "-h"}
USAGE = """\
Usage: berth <command> [options]

  berth up         run the whole platform on this machine (embedded PostgreSQL and Redis,
                   web, gateway, usage consumer, Celery worker and beat, a node agent)
  berth gateway    the OpenAI-compatible metering gateway alone (no Django, no database)
  berth agent      a node agent: registers this host's GPUs/CPU slots and runs engines
  berth <command>  any Django management command: berth migrate, berth createsuperuser, ...

'berth <command> --help' describes one command. The Django management commands:
"""


def main(argv: list[str] | None = None) -> None:
    """Run the command that ``argv`` (default: ``sys.argv[1:]``) names; exits with its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    word = args[0] if args else "help"
    if word == "gateway":
        from gateway.__main__ import main as gateway_main

        sys.argv = ["berth gateway", *args[1:]]
        sys.exit(gateway_main())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    if word in HELP_WORDS or word == "embedded":
        # Listing commands, or looking after the embedded servers, must not start those servers.
        os.environ["BERTH_EMBEDDED_AUTOSTART"] = "0"
    from django.core.management import execute_from_command_line

    if word in HELP_WORDS and len(args) <= 1:
        sys.stdout.write(USAGE)
        args = ["help"]
    execute_from_command_line(["berth", ALIASES.get(word, word), *args[1:]])


if __name__ == "__main__":
    main()
