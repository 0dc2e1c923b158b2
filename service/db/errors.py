"""What a database failure means, by SQLSTATE class: the one home of that rule.

`classify` sorts every failure into one `Failure`:

* `UNAVAILABLE`: the database cannot do any work now, whatever the rows: out of resources
  (class 53: disk full, out of memory, too many connections), operator intervention (57:
  shutdown, crash recovery, not accepting yet, a cancelled statement), system errors (58: I/O),
  connection exceptions (08), and a connection lost or never made on the client side (OSError,
  timeouts, asyncpg's InterfaceError such as "connection is closed", and its
  InternalClientError: a server that terminates a connection (crash, shutdown,
  `pg_terminate_backend`) sends its FATAL error to an idle connection, which asyncpg's protocol
  cannot place, so the next statement on it fails with "cannot switch to state N; another
  operation (2) is in progress" until the socket's end arrives and closes it; MagicStack/asyncpg
  #1069, handled the same way by SQLAlchemy since its #13241). Callers answer 503 with
  Retry-After; retrying later can succeed with the very same rows.
* `ABORTED`: the database aborted the transaction as a deadlock or serialization victim
  (possible when concurrent inserts create a new TimescaleDB chunk); re-running it can succeed.
* `ROW`: the rows' own data is at fault: data exceptions (22), integrity constraint violations
  (23), and values asyncpg's encoders refuse on the client side (its `DataError`, and the
  TypeError / ValueError / OverflowError its binary COPY raises as they are). The same rows will
  fail again: only the request that carries them fails, with a 422.
* `FAULT`: anything else (a schema not at head, 42; a program limit, 54; an internal server
  error, XX; a bug): neither the rows' known fault nor worth waiting for. A 500.

`is_transient`: `UNAVAILABLE` or `ABORTED`, the failures after which the same work may succeed.
`describe`: what an `UNAVAILABLE` failure is, in words for the log ("out of disk space").
`is_missing_partition`: PostgreSQL found no partition for a row (see there).
`may_heal_by_waiting`: before the first connection, a server that is not (yet) there or not
(yet) accepting; any other server error will not go away by waiting.
`STATEMENT_FAILED`: a statement failed on the server or its connection broke; a background step
reports it and goes on with its next step, never stopping the service.
`CALL_FAILED`: `STATEMENT_FAILED` or no connection at all (refused, timed out): what a background
loop catches around a round that acquires its own connection, logs, and goes on after a pause.
"""

from __future__ import annotations

import asyncio
import enum
import logging

import asyncpg


class Failure(enum.Enum):
    UNAVAILABLE = "unavailable"
    ABORTED = "aborted"
    ROW = "row"
    FAULT = "fault"


# SQLSTATE classes (the first two characters) after which the database can do no work now.
_UNAVAILABLE_CLASSES = {
    "08": "connection failure",
    "53": "out of resources",
    "57": "stopped by the operator",
    "58": "system error",
}
# The conditions an operator acts on, named in the log line that says the database is down.
_UNAVAILABLE_STATES = {
    "53100": "out of disk space",
    "53200": "out of memory",
    "53300": "out of connection slots",
    "53400": "at a configuration limit",
    "57014": "cancelling statements",
    "57P01": "shutting down",
    "57P02": "restarting after a crash",
    "57P03": "not accepting connections yet",
    "57P04": "dropped",
    "58030": "failing to read or write its files",
}
_ROW_CLASSES = ("22", "23")
ABORTED_SQLSTATES = ("40001", "40P01")  # serialization_failure, deadlock_detected

ABORTED_TRANSACTION: tuple[type[Exception], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)

# Client-side refusals of a value, raised before anything reaches the server. asyncpg's own
# `DataError` subclasses InterfaceError (which otherwise means "connection is closed"), so it is
# checked first; `ClientConfigurationError` subclasses ValueError but is about the client, not
# the rows.
_ROWS_REFUSED_BY_CLIENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions._base.DataError,
    TypeError,
    ValueError,
    OverflowError,
)
_CLIENT_FAULTS: tuple[type[BaseException], ...] = (
    # Subclasses InternalClientError (a lost protocol state) but means a prepared statement
    # outlived a change of the schema under it.
    asyncpg.exceptions.OutdatedSchemaCacheError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)
# A connection whose protocol state asyncpg lost (see the module's docstring): never the rows.
_PROTOCOL_LOST = asyncpg.exceptions._base.InternalClientError
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    _PROTOCOL_LOST,
    OSError,
    TimeoutError,
)

STATEMENT_FAILED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    _PROTOCOL_LOST,
)
CALL_FAILED: tuple[type[BaseException], ...] = (*STATEMENT_FAILED, OSError, TimeoutError)


async def round_failed(log: logging.Logger, what: str, exc: BaseException, pause: float) -> None:
    """A background loop's round failed: a database that is away (`CALL_FAILED`) is a warning,
    anything else a bug logged with its traceback; either way the loop goes on after `pause`
    seconds (the push and webhook workers, the bulk expander)."""
    if isinstance(exc, CALL_FAILED):
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
    else:
        log.error("%s failed", what, exc_info=exc)
    await asyncio.sleep(pause)


def _sqlstate(exc: BaseException) -> str | None:
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    # A server error carries its SQLSTATE even where asyncpg has no class for it.
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def classify(exc: BaseException) -> Failure:
    """What `exc`, raised by a database call, means for the work that raised it."""
    if isinstance(exc, asyncpg.PostgresError):
        state = _sqlstate(exc)
        if state is None:
            return Failure.FAULT
        if state[:2] in _UNAVAILABLE_CLASSES:
            return Failure.UNAVAILABLE
        if state in ABORTED_SQLSTATES:
            return Failure.ABORTED
        if state[:2] in _ROW_CLASSES:
            return Failure.ROW
        return Failure.FAULT
    if isinstance(exc, _CLIENT_FAULTS):
        return Failure.FAULT
    if isinstance(exc, _ROWS_REFUSED_BY_CLIENT):
        return Failure.ROW
    if isinstance(exc, _CONNECTION_LOST):
        return Failure.UNAVAILABLE
    return Failure.FAULT


def is_transient(exc: BaseException) -> bool:
    """Whether the same work may succeed when retried later, on a fresh connection."""
    return classify(exc) in (Failure.UNAVAILABLE, Failure.ABORTED)


def describe(exc: BaseException) -> str:
    """An `UNAVAILABLE` failure in words, with its SQLSTATE when the server sent one:
    "out of disk space (SQLSTATE 53100)", "unreachable (ConnectionRefusedError)"."""
    state = _sqlstate(exc)
    if state is None:
        return f"unreachable ({type(exc).__name__})"
    name = _UNAVAILABLE_STATES.get(state) or _UNAVAILABLE_CLASSES.get(state[:2], "unavailable")
    return f"{name} (SQLSTATE {state})"


def is_missing_partition(exc: BaseException) -> bool:
    """PostgreSQL found no partition of a range-partitioned table for a row.

    PostgreSQL 15 reports it (`ExecFindPartition`) as SQLSTATE 23514 check_violation, the same
    code as a CHECK constraint, but names the partitioned table only (`errtable`); a violated
    CHECK or domain constraint always names its constraint (`errtableconstraint`). So a 23514
    without a constraint name is a missing partition, or the rarer "violates partition
    constraint" of an insert straight into a partition (which the service never does). The
    message text is not used: it depends on the server's `lc_messages`."""
    return _sqlstate(exc) == "23514" and getattr(exc, "constraint_name", None) is None


def may_heal_by_waiting(exc: BaseException) -> bool:
    """Whether connecting may succeed later: the server is not (yet) there or accepting."""
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return False
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)
