"""The PostgreSQL pool, and the one place where its errors are translated.

Code above the store layer never receives an asyncpg exception about the
connection: `Database.transaction()` turns every sign that the database
cannot be reached, or is too busy to respond in time, into
`ServiceUnavailable`. Errors about the data itself (a violated
constraint, say) pass through for the caller to interpret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from service.errors import ServiceUnavailable

__all__ = ["Database", "UNAVAILABLE_ERRORS", "wait_for_database"]

logger = logging.getLogger(__name__)

# Errors that mean "the database is down, restarting, overloaded or too
# slow", as opposed to "the request is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.LockNotAvailableError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


# Client-side failures after which a connection's protocol state is unknown.
_PROTOCOL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.CancelledError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class Database:
    """A connection pool with bounded waits at every step."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, url: str, *, pool_size: int, timeout: float, application_name: str = "nas-snapshots"
    ) -> Database:
        milliseconds = str(int(timeout * 1000))
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            command_timeout=timeout,
            # asyncpg's default reset sends "UNLISTEN *; RESET ALL; ..." on
            # every release, a round trip per call that measurably slowed
            # admissions (docs/benchmarks.md). Pool connections never LISTEN
            # or SET, and release their advisory locks themselves.
            reset=_keep_session,
            server_settings={
                "application_name": application_name,
                # Server-side limits hold even when a client dies mid-call.
                "statement_timeout": milliseconds,
                "lock_timeout": milliseconds,
                "idle_in_transaction_session_timeout": str(int(timeout * 6000)),
                "timezone": "UTC",
            },
        )
        return cls(pool, timeout)

    @contextlib.asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """Run the block in one transaction, committed when the block returns.

        Raises ServiceUnavailable when the database cannot be reached or a
        lock or statement does not finish within the timeout.
        """
        async with self._translated_errors(), self._connection() as connection:
            isolation = "repeatable_read" if readonly else "read_committed"
            async with connection.transaction(isolation=isolation, readonly=readonly):
                yield connection

    async def fetchrow(self, query: str, *arguments: object) -> asyncpg.Record | None:
        """Run one statement in its own implicit transaction: a single round trip."""
        async with self._translated_errors(), self._connection() as connection:
            return await connection.fetchrow(query, *arguments)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection, dropping it if the client side of its protocol may be mid-operation.

        The pool does not reset connections on release. A connection left by
        a timeout, a cancelled call or a lost socket would therefore be lent
        again in that state, so it is terminated and the pool opens a new
        one. Errors the server reported leave the session usable, so those
        connections are kept.
        """
        async with self.pool.acquire(timeout=self.timeout) as connection:
            try:
                yield connection
            except _PROTOCOL_ERRORS:
                connection.terminate()
                raise

    @contextlib.asynccontextmanager
    async def _translated_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except UNAVAILABLE_ERRORS as exc:
            logger.warning("Database unavailable: %s: %s", type(exc).__name__, exc)
            raise ServiceUnavailable() from exc
        except asyncpg.InternalClientError as exc:
            # A connection whose protocol state broke, seen after outages.
            logger.warning("Database connection in a broken state: %s", exc)
            raise ServiceUnavailable() from exc
        except asyncpg.InterfaceError as exc:
            # The pool reports a connection lost mid-query this way.
            if "connection" not in str(exc).lower():
                raise
            logger.warning("Database connection lost: %s", exc)
            raise ServiceUnavailable() from exc

    @contextlib.asynccontextmanager
    async def exclusive(self, lock_key: int) -> AsyncIterator[asyncpg.Connection | None]:
        """Hold a session advisory lock for the block, yielding its connection, or None if another session holds it.

        Background jobs that every replica runs use it so that only one
        replica runs them at a time. The lock ends with the session, so a
        replica that dies mid-run does not block the others.
        """
        async with self._translated_errors(), self._connection() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                yield None
                return
            try:
                yield connection
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", lock_key)

    async def ping(self) -> bool:
        """Tell whether a trivial query succeeds within the timeout."""
        try:
            async with self.pool.acquire(timeout=self.timeout) as connection:
                await connection.fetchval("SELECT 1", timeout=self.timeout)
            return True
        except (*UNAVAILABLE_ERRORS, asyncpg.InterfaceError):
            return False

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), self.timeout)
        except TimeoutError:
            # Connections still busy past the budget: drop them.
            logger.warning("PostgreSQL pool did not close within %.1f s; terminating it", self.timeout)
            self.pool.terminate()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Leave a released connection's session as it is."""


async def wait_for_database(url: str, *, attempts: int, delay: float) -> None:
    """Return once PostgreSQL accepts a connection, logging each failed try."""
    for attempt in range(1, attempts + 1):
        try:
            connection = await asyncpg.connect(url, timeout=delay)
        except UNAVAILABLE_ERRORS as exc:
            if attempt == attempts:
                raise
            logger.warning(
                "PostgreSQL is not reachable (attempt %d of %d): %s: %s", attempt, attempts, type(exc).__name__, exc
            )
            await asyncio.sleep(delay)
        else:
            await connection.close()
            return
