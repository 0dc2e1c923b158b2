"""What a database failure means, by SQLSTATE class: unavailable (503, retried, never blamed on
the rows), aborted (re-run), the rows' own data (422 for their request alone), or a fault (500)."""

from __future__ import annotations

import asyncpg
import pytest

from service.db.errors import (
    ABORTED_TRANSACTION,
    Failure,
    classify,
    describe,
    is_missing_partition,
    is_transient,
    may_heal_by_waiting,
)


def server_error(sqlstate: str, **fields: str) -> asyncpg.PostgresError:
    """An error as the server sends it: asyncpg picks the class by SQLSTATE (the generic one
    for a SQLSTATE it has no class for) and keeps the fields."""
    return asyncpg.PostgresError.new({"C": sqlstate, "M": "message", **fields})


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DiskFullError(),  # 53100
        asyncpg.OutOfMemoryError(),  # 53200
        asyncpg.TooManyConnectionsError(),  # 53300
        asyncpg.ConfigurationLimitExceededError(),  # 53400
        asyncpg.InsufficientResourcesError(),  # 53000
        asyncpg.AdminShutdownError(),  # 57P01
        asyncpg.CrashShutdownError(),  # 57P02
        asyncpg.CannotConnectNowError(),  # 57P03
        asyncpg.QueryCanceledError(),  # 57014: statement_timeout
        asyncpg.PostgresIOError(),  # 58030
        asyncpg.UndefinedFileError(),  # 58P01
        asyncpg.ConnectionDoesNotExistError(),  # 08003
        asyncpg.ConnectionFailureError(),  # 08006
        server_error("53999"),  # a resource condition asyncpg has no class for: by its class
        server_error("57P05"),
        asyncpg.InterfaceError("connection is closed"),
        # A terminated backend's FATAL error read by an idle connection (asyncpg #1069).
        asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        ConnectionResetError(),
        ConnectionRefusedError(),
        OSError(),
        TimeoutError(),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'sqlstate', '')}",
)
def test_resources_operator_intervention_system_and_connection_errors_are_unavailable(
    exc: BaseException,
) -> None:
    assert classify(exc) is Failure.UNAVAILABLE
    assert is_transient(exc)


def test_an_unavailable_condition_is_named_for_the_log_with_its_sqlstate() -> None:
    assert describe(server_error("53100")) == "out of disk space (SQLSTATE 53100)"
    assert describe(asyncpg.TooManyConnectionsError()) == "out of connection slots (SQLSTATE 53300)"
    assert describe(server_error("57P01")) == "shutting down (SQLSTATE 57P01)"
    assert describe(server_error("53999")) == "out of resources (SQLSTATE 53999)"
    assert describe(ConnectionRefusedError()) == "unreachable (ConnectionRefusedError)"


@pytest.mark.parametrize("exc", [asyncpg.DeadlockDetectedError(), asyncpg.SerializationError()])
def test_a_deadlock_or_serialization_victim_is_aborted_and_re_run(exc: BaseException) -> None:
    assert classify(exc) is Failure.ABORTED
    assert is_transient(exc)
    assert isinstance(exc, ABORTED_TRANSACTION)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.CheckViolationError(),  # 23514
        asyncpg.NotNullViolationError(),  # 23502
        asyncpg.ForeignKeyViolationError(),  # 23503
        asyncpg.UniqueViolationError(),  # 23505
        asyncpg.NumericValueOutOfRangeError(),  # 22003
        asyncpg.InvalidTextRepresentationError(),  # 22P02
        asyncpg.StringDataRightTruncationError(),  # 22001
        asyncpg.UntranslatableCharacterError(),  # 22P05
        server_error("22999"),
        # Refused by asyncpg's encoders before reaching the server.
        asyncpg.exceptions._base.DataError("invalid input for query argument $1"),
        OverflowError("int too big to convert"),
        TypeError("an integer is required"),
        ValueError("invalid value"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'sqlstate', '')}",
)
def test_only_data_errors_and_values_the_encoder_refuses_are_the_rows_fault(exc: BaseException) -> None:
    assert classify(exc) is Failure.ROW
    assert not is_transient(exc)


def test_asyncpg_client_side_data_errors_are_never_taken_for_a_lost_connection() -> None:
    """asyncpg's own DataError (a query argument its encoder refuses) subclasses InterfaceError,
    which otherwise means "connection is closed"; it is a refusal of the rows, never transient."""
    client_data_error = asyncpg.exceptions._base.DataError
    assert issubclass(client_data_error, asyncpg.InterfaceError)
    assert classify(client_data_error("value out of range")) is Failure.ROW


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UndefinedTableError(),  # 42P01: a schema not at head
        asyncpg.UndefinedColumnError(),  # 42703
        asyncpg.InsufficientPrivilegeError(),  # 42501
        asyncpg.ProgramLimitExceededError(),  # 54000
        asyncpg.InternalServerError(),  # XX000
        asyncpg.LockNotAvailableError(),  # 55P03
        asyncpg.exceptions.ClientConfigurationError("bad option"),  # a ValueError, not the rows'
        asyncpg.exceptions.UnsupportedServerFeatureError("no such feature"),
        asyncpg.exceptions.OutdatedSchemaCacheError("cache"),
        asyncpg.PostgresError(),  # no SQLSTATE at all
        KeyError("a bug"),
        RuntimeError(),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'sqlstate', '')}",
)
def test_anything_else_is_a_fault_neither_retried_nor_blamed_on_the_rows(exc: BaseException) -> None:
    assert classify(exc) is Failure.FAULT
    assert not is_transient(exc)


def test_a_missing_partition_is_told_by_sqlstate_and_the_absent_constraint_not_by_message() -> None:
    """PostgreSQL 15 as measured: no partition for a row is 23514 naming the partitioned table and
    no constraint; a violated CHECK constraint is 23514 naming its constraint."""
    no_partition = server_error("23514", t="device_heartbeats", s="public", M="keine Partition")
    check = server_error("23514", t="device_heartbeats", s="public", n="ck_battery_pct")
    assert isinstance(no_partition, asyncpg.CheckViolationError)
    assert is_missing_partition(no_partition)
    assert not is_missing_partition(check)
    assert not is_missing_partition(server_error("23502", t="device_heartbeats"))
    assert not is_missing_partition(ValueError("no partition of relation"))
    assert classify(no_partition) is Failure.ROW  # once partitions were created: the row's fault


def test_only_a_server_not_yet_there_or_not_yet_accepting_is_waited_for() -> None:
    assert may_heal_by_waiting(ConnectionRefusedError())
    assert may_heal_by_waiting(asyncpg.CannotConnectNowError())
    assert may_heal_by_waiting(asyncpg.TooManyConnectionsError())
    assert not may_heal_by_waiting(asyncpg.InvalidPasswordError())
    assert not may_heal_by_waiting(asyncpg.InvalidCatalogNameError())
