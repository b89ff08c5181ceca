"""The management API's pagination: DRF's ``?limit=&offset=``, bounded and validated.

DRF passes any integer through to the database (PostgreSQL refuses an OFFSET or LIMIT beyond a
bigint: ``?offset=99999999999999999999`` was a 500) and silently ignores a value that is not one
(``?limit=ten`` gave the default page). Both were found by tests/security/test_api_schema.py; a
bad value is now a 400 in DRF's error shape, as the schema promises.
"""

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    max_limit = 1000
    max_offset = 10**12

    def paginate_queryset(self, queryset, request, view=None):
        errors = {}
        for name in (self.limit_query_param, self.offset_query_param):
            values = request.query_params.getlist(name)
            if len(values) > 1:
                errors[name] = ["Give this parameter once."]
            elif values and not (values[0].isascii() and values[0].isdigit()):
                errors[name] = ["Must be a whole number of 0 or more."]
        if errors:
            raise ValidationError(errors)
        return super().paginate_queryset(queryset, request, view)

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)
