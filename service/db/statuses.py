"""Status enums that the database checks: one `StrEnum` per lifecycle spells its statuses once,
and every other spelling is derived from it, so none can drift from the others:

* the check constraint's text (`check_constraint`), as the live table has it (a test compares
  the two);
* SQL lists for statements and index predicates (`sql_in`);
* the msgspec `Literal` of a request field or a query parameter (`literal`), which is also the
  `enum` of the OpenAPI document, and the plain tuple of values (`values`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal


class CheckedStatus(StrEnum):
    """Base of a lifecycle's status enum: members in the lifecycle's order."""

    @classmethod
    def values(cls, members: Iterable[CheckedStatus] | None = None) -> tuple[str, ...]:
        """The statuses as text (all, or `members`), in declaration order."""
        chosen = set(cls) if members is None else set(members)
        return tuple(m.value for m in cls if m in chosen)

    @classmethod
    def sql_list(cls, members: Iterable[CheckedStatus] | None = None) -> str:
        """`('a', 'b')`: the statuses as an SQL list of literals."""
        return "(" + ", ".join(f"'{v}'" for v in cls.values(members)) + ")"

    @classmethod
    def sql_in(cls, column: str, members: Iterable[CheckedStatus] | None = None) -> str:
        """`column IN ('a', 'b')`, in the form PostgreSQL prints a check constraint's text."""
        return f"{column} IN {cls.sql_list(members)}"

    @classmethod
    def check_constraint(cls, column: str = "status") -> str:
        """The text of the table's `status_known` check constraint."""
        return cls.sql_in(column)

    @classmethod
    def literal(cls, members: Iterable[CheckedStatus] | None = None) -> Any:
        """`Literal["a", "b"]` for msgspec (exact match, and an `enum` in the document)."""
        return Literal[cls.values(members)]  # type: ignore[valid-type]

    @classmethod
    def description(cls, members: Iterable[CheckedStatus] | None = None) -> str:
        """ "a, b or c": the statuses in words, for a field's description."""
        *head, last = cls.values(members)
        return f"{', '.join(head)} or {last}" if head else last
