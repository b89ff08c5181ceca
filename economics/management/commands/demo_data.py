"""``manage.py demo_data [--days N] [--scale X]`` fills demo data; ``--remove`` takes it out again."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from economics import demo


class Command(BaseCommand):
    help = (
        "Create a month of demo usage, tenants, models and fleet history (every name starts with "
        "'demo-'), or remove exactly that with --remove. Running it twice changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--remove", action="store_true", help="Delete the demo data (and only it).")
        parser.add_argument("--days", type=int, default=30, help="Days of history ending now (default 30).")
        parser.add_argument(
            "--scale", type=float, default=1.0, help="Multiply the request volume (default 1)."
        )

    def handle(self, *args, remove: bool, days: int, scale: float, **options) -> None:
        if remove:
            gone = demo.remove()
            self.stdout.write(
                f"Removed demo data: {gone.tenants} tenants, {gone.usage_records} usage records, "
                f"{gone.workers} workers."
            )
            return
        if days < 1 or days > 366 or scale <= 0:
            self.stderr.write("--days must be 1..366 and --scale above 0.")
            raise SystemExit(2)
        if demo.present():
            self.stdout.write("Demo data is already present (remove it first with --remove to recreate it).")
            return
        made = demo.create(days=days, scale=scale)
        self.stdout.write(
            f"Created demo data: {made.tenants} tenants, {made.keys} API keys, {made.workers} workers, "
            f"{made.usage_records} usage records, {made.utilization_rows} utilization hours."
        )
        logins = ", ".join(f"owner@{slug}.example" for slug in made.slugs)
        self.stdout.write(f"Console logins (owner@ and dev@ each): {logins}; password {made.password}")
