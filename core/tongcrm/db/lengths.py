"""How long a text a ``String(n)`` column keeps, read from the model itself, so an input's bound is written once.

An API field that lands in a bounded column must refuse a longer text where it is read: PostgreSQL refuses it with a
500 (``value too long``) and SQLite, which does not enforce lengths, stores it whole. ``Annotated[str,
fits(Model.column)]`` bounds a msgspec field (a 400 naming the field and the limit, and ``maxLength`` in the OpenAPI),
and :func:`check_fits` is the service's own check for the callers that are not msgspec (the console's forms): both
read the length from the column, so the bound cannot drift from it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa

from tongcrm.errors import TongcrmError, Unprocessable

#: The longest free text a person writes that is kept in an unbounded (``Text``) column: a merge's reason, a
#: consent's proof. Long enough for any note; short enough that one request cannot fill the log with megabytes.
NOTE_MAX = 2000


def column_length(column: Any) -> int:
    """The characters ``column`` (a mapped attribute such as ``Model.name``, or a table column) keeps."""
    col = column.property.columns[0] if hasattr(column, "property") else column
    kind = col.type
    if not isinstance(kind, sa.String) or kind.length is None:
        raise TypeError(f"{col} is not a bounded String column")
    return int(kind.length)


def too_long(value: str, field: str, column: Any) -> str | None:
    """Why ``value`` does not fit ``column`` (naming ``field`` and the limit), or None when it does: for an
    entry refused on its own among others (an inbound push), where raising would take its neighbours down."""
    limit = column_length(column)
    return f"{field} is longer than {limit} characters (the longest kept)" if len(value) > limit else None


def fits(column: Any, *, min_length: int | None = None) -> msgspec.Meta:
    """A msgspec bound: at most as long as ``column`` keeps."""
    if min_length is None:
        return msgspec.Meta(max_length=column_length(column))
    return msgspec.Meta(min_length=min_length, max_length=column_length(column))


def check_fits(
    value: str | None, field: str, column: Any, *, refuse: type[TongcrmError] = Unprocessable
) -> None:
    """A 422 naming ``field`` and the limit when ``value`` is longer than ``column`` keeps; ``refuse=BadRequest``
    where the API answers malformed input with a 400 (a query parameter, a body field read by hand)."""
    limit = column_length(column)
    if value is not None and len(value) > limit:
        raise refuse(
            f"{field} is longer than {limit} characters (the longest kept)", extra={"pointer": f"/{field}"}
        )
