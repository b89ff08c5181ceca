"""The management API's pagination: DRF's ``?limit=&offset=``, bounded and validated.

DRF passes any integer through to the database (PostgreSQL refuses an OFFSET or LIMIT beyond a
bigint: ``?offset=99999999999999999999`` was a 500) and silently ignores a value that is not one
(``?limit=ten`` gave the default page). Both were found by tests/security/test_api_schema.py; a
value outside the bounds the schema states is now a 400 in DRF's error shape.
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
            elif values and (len(values[0]) > 15 or int(values[0]) > self._maximum(name)):
                errors[name] = [f"At most {self._maximum(name)}."]
        if errors:
            raise ValidationError(errors)
        return super().paginate_queryset(queryset, request, view)

    def _maximum(self, name: str) -> int:
        return self.max_limit if name == self.limit_query_param else self.max_offset

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"].update(minimum=0, maximum=self._maximum(parameter["name"]))
        return parameters
