"""Which database failures are worth retrying: the one home of that rule.

* `ABORTED_TRANSACTION`: the database aborted a transaction as a deadlock or serialization
  victim (possible when concurrent inserts create a new TimescaleDB chunk); re-running it on the
  same connection can succeed.
* `UNREACHABLE`: the database could not be reached or is not accepting yet; the API answers these
  with 503 and Retry-After.
* `is_transient`: any failure after which the same work may succeed on a fresh connection
  (both of the above, a lost connection, a server shutting down, no free connection slot).
  Client-side errors about the rows (`ROWS_REFUSED_BY_CLIENT`) are never transient, even where
  asyncpg derives them from a connection error class.
* `may_heal_by_waiting`: before the first connection, a server that is not (yet) there or not
  (yet) accepting; any other server error will not go away by waiting.
* `STATEMENT_FAILED`: a statement failed on the server or its connection broke; a background
  step reports it and goes on with its next step, never stopping the service.
"""

from __future__ import annotations

import asyncpg

ABORTED_TRANSACTION: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)

UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    OSError,
    TimeoutError,
)

# Client-side errors are about the rows, not the connection: retrying cannot help. asyncpg's
# `DataError` (a value its encoder refuses) subclasses InterfaceError, which TRANSIENT holds
# for "connection is closed", so these are checked first.
ROWS_REFUSED_BY_CLIENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions._base.DataError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)

TRANSIENT: tuple[type[BaseException], ...] = (
    *ABORTED_TRANSACTION,
    *UNREACHABLE,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
)

STATEMENT_FAILED: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """Whether the same work may succeed when retried on a fresh connection."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, ROWS_REFUSED_BY_CLIENT)


def may_heal_by_waiting(exc: BaseException) -> bool:
    """Whether connecting may succeed later: the server is not (yet) there or accepting."""
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return False
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)
