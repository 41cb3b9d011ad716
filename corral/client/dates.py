"""Wire dates read as aware datetimes: every request's submission date and an engine's two
dates per reply (sans-I/O).

These three reads per task were calls from compiled code (``records``, ``metadata_table``)
into the interpreted :mod:`corral.client.metadata`, which stays interpreted for its public
``Metadata`` (a dict subclass users read); here they are compiled too (:mod:`corral.native`),
and ``metadata`` re-exports them under the same names.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["parse_date", "wire_date"]


def parse_date(value: object) -> datetime | None:
    """An ISO 8601 wire date as an aware datetime (None for anything else)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def wire_date(value: object) -> datetime | None:
    """:func:`parse_date` with the usual case first: a string, as every engine writes."""
    if type(value) is str:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return parse_date(value)
