"""Request parsers of the management API (``/api``).

DRF's multipart parser reads a body with no well-formed part as no data at all, so a PATCH whose
body is garbage would succeed as an empty update. A non-empty multipart body must hold at least
one part; otherwise the caller gets a 400 that says so.
"""

from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser


class StrictMultiPartParser(MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type=media_type, parser_context=parser_context)
        request = (parser_context or {}).get("request")
        length = int((request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0)
        if length and not parsed.data and not parsed.files:
            raise ParseError("Malformed multipart body: it holds no form part.")
        return parsed
