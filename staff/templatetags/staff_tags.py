from django import template

register = template.Library()


@register.filter
def thousands(value) -> str:
    """``1234567`` → ``1,234,567`` (numbers only; anything else unchanged)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return value
