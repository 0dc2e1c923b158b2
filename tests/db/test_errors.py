"""Which database failures are transient: retried by the writer, never blamed on the rows."""

from __future__ import annotations

import asyncpg
import pytest

from service.db.errors import ABORTED_TRANSACTION, ROWS_REFUSED_BY_CLIENT, is_transient, may_heal_by_waiting


def test_asyncpg_client_side_data_errors_are_never_taken_for_a_lost_connection() -> None:
    """asyncpg's own DataError (a query argument its encoder refuses) subclasses InterfaceError,
    which counts as "connection is closed"; it is a refusal of the rows, never transient."""
    client_data_error = asyncpg.exceptions._base.DataError
    assert issubclass(client_data_error, asyncpg.InterfaceError)
    assert client_data_error in ROWS_REFUSED_BY_CLIENT
    assert all(issubclass(cls, asyncpg.InterfaceError) for cls in ROWS_REFUSED_BY_CLIENT)
    assert not is_transient(client_data_error("value out of range"))
    assert not is_transient(OverflowError()) and not is_transient(TypeError())


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DeadlockDetectedError(),
        asyncpg.SerializationError(),
        asyncpg.ConnectionDoesNotExistError(),
        asyncpg.CannotConnectNowError(),
        asyncpg.AdminShutdownError(),
        asyncpg.TooManyConnectionsError(),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_a_lost_connection_or_an_aborted_transaction_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


def test_a_row_the_database_refuses_is_not_transient() -> None:
    assert not is_transient(asyncpg.CheckViolationError())
    assert not is_transient(asyncpg.NumericValueOutOfRangeError())
    assert not any(issubclass(cls, asyncpg.CheckViolationError) for cls in ABORTED_TRANSACTION)


def test_only_a_server_not_yet_there_or_not_yet_accepting_is_waited_for() -> None:
    assert may_heal_by_waiting(ConnectionRefusedError())
    assert may_heal_by_waiting(asyncpg.CannotConnectNowError())
    assert may_heal_by_waiting(asyncpg.TooManyConnectionsError())
    assert not may_heal_by_waiting(asyncpg.InvalidPasswordError())
    assert not may_heal_by_waiting(asyncpg.InvalidCatalogNameError())
