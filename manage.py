#!/usr/bin/env python
"""Django's command-line utility for Berth."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")
    if sys.argv[1:2] == ["embedded"]:
        # Looking after the embedded servers must not start them first.
        os.environ["BERTH_EMBEDDED_AUTOSTART"] = "0"
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
