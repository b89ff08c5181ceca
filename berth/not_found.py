"""The 404 answer: DRF's JSON shape under ``/api/``, Django's page everywhere else.

A management-API URL that matches no route (a malformed id in the path, a typo) would otherwise
get Django's HTML page, which API clients cannot parse.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.views import defaults


def page_not_found(request, exception):
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
