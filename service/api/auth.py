"""Authentication of each API call, and the role each service needs.

Authentication is off only when the API listens on loopback and
NAS_AUTH is not "on": every call then acts as the account "default" with
the admin role, for local use. Health and reflection never need
credentials (see `service.api.interceptor`).
"""

from __future__ import annotations

import grpc

from service.domain import identity
from service.domain.identity import Caller
from service.errors import Forbidden
from service.settings import Settings
from service.store.database import Database

__all__ = ["ADMIN_SERVICES", "Authenticator"]

# Internal services for the system that owns file systems, and for operators.
ADMIN_SERVICES = ("/nas.v1.FileSystemService/", "/nas.v1.AdminService/")


class Authenticator:
    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self.enabled = settings.auth_enabled
        self._admin_accounts = settings.admin_accounts

    async def authenticate(self, method: str, context: grpc.aio.ServicerContext) -> Caller:
        """Return who makes the call, raising InvalidCredential or Forbidden."""
        if not self.enabled:
            return identity.DEFAULT_CALLER

        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        if authorization:
            async with self._database.transaction(readonly=True) as connection:
                caller = await identity.caller_for_token(connection, authorization)
        else:
            caller = identity.caller_for_certificate(
                context.auth_context().get("x509_common_name", []), self._admin_accounts
            )

        if method.startswith(ADMIN_SERVICES) and not caller.is_admin:
            raise Forbidden(f"Account {caller.account} is not allowed to call {method}; it needs the admin role.")
        return caller
