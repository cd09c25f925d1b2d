"""Caller identity: accounts, roles and bearer tokens.

A caller acts for one account with one role. `user` callers reach the
snapshot API within their account; `admin` callers also reach the
internal FileSystemService and AdminService, for every account.

A caller proves who it is in one of two ways:

- A bearer token in the `authorization` metadata: `Bearer nas.<id>.<secret>`.
  The token names its account and role. Only the SHA-256 hash of the
  secret is stored, and it is compared in constant time.
- A client certificate, when the API requires them (mutual TLS). Its
  subject common name is the account; the accounts listed in
  NAS_ADMIN_ACCOUNTS get the admin role.

A token, when present, decides; the certificate is used otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

import asyncpg

from service.errors import InvalidCredential, InvalidParameter
from service.store import tokens

__all__ = [
    "ACCOUNT",
    "Caller",
    "DEFAULT_CALLER",
    "check_account",
    "issue_token",
    "caller_for_certificate",
    "caller_for_token",
]

# 1 to 64 ASCII letters, digits, ".", "_" and "-", starting with a letter or digit.
ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z", re.ASCII)
_TOKEN = re.compile(r"nas\.([a-z0-9]{12})\.([0-9a-f]{64})\Z", re.ASCII)
_BEARER_PREFIX = "bearer "


@dataclasses.dataclass(frozen=True)
class Caller:
    account: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# The caller of every call when authentication is off (loopback only).
DEFAULT_CALLER = Caller(account="default", role="admin")


def check_account(value: str, field: str = "account") -> str:
    if not ACCOUNT.match(value):
        raise InvalidParameter(
            field,
            "Account",
            f"The {field} {value[:80]!r} is invalid. An account is 1 to 64 ASCII letters, digits, '.', '_' "
            "and '-', starting with a letter or digit.",
        )
    return value


async def issue_token(connection: asyncpg.Connection, account: str, role: str) -> tuple[str, str]:
    """Create a token; return its id and the full token, which is shown only this once."""
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_hex(32)
    await tokens.insert(connection, token_id, _hash(secret), account, role)
    return token_id, f"nas.{token_id}.{secret}"


async def caller_for_token(connection: asyncpg.Connection, authorization: str) -> Caller:
    """Return the caller a `Bearer` authorization value names, or raise InvalidCredential."""
    if not authorization[: len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX:
        raise InvalidCredential("The authorization metadata must be 'Bearer <token>'.")
    match = _TOKEN.match(authorization[len(_BEARER_PREFIX) :].strip())
    if match is None:
        raise InvalidCredential("The bearer token is malformed. Tokens look like nas.<id>.<secret>.")

    token_id, secret = match.groups()
    record = await tokens.get(connection, token_id)
    # Compare against a dummy hash when the id is unknown, so the time
    # taken does not tell which token ids exist.
    expected = record.secret_hash if record is not None else _hash("0" * 64)
    valid = hmac.compare_digest(expected, _hash(secret))
    if record is None or not valid or record.revoked_at is not None:
        raise InvalidCredential("The bearer token is unknown or revoked.")
    return Caller(account=record.account, role=record.role)


def caller_for_certificate(common_names: list[bytes], admin_accounts: tuple[str, ...]) -> Caller:
    """Return the caller a verified client certificate names, or raise InvalidCredential."""
    if len(common_names) != 1:
        raise InvalidCredential("The call carries no credential: send a bearer token or a client certificate.")
    account = common_names[0].decode("utf-8", errors="replace")
    if not ACCOUNT.match(account):
        raise InvalidCredential("The client certificate's common name is not a valid account name.")
    return Caller(account=account, role="admin" if account in admin_accounts else "user")


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
