"""DRF authentication with management keys (``Authorization: Bearer mk-berth-…``)."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from tenants.constants import KeyKind
from tenants.keys import InvalidKey, authenticate_key
from tenants.models import Membership


class ManagementKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw:
            return None
        try:
            api_key = authenticate_key(raw.strip(), kind=KeyKind.MANAGEMENT)
        except InvalidKey:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.") from None
        user = api_key.created_by
        # A management key acts as its creator, with the role they hold *now* in the key's tenant.
        if (
            user is None
            or not user.is_active
            or not Membership.objects.filter(user=user, tenant=api_key.tenant).exists()
        ):
            raise exceptions.AuthenticationFailed("This key's owner is no longer a member of the tenant.")
        return (user, api_key)

    def authenticate_header(self, request):
        return self.keyword
