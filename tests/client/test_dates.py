"""Wire dates read as aware datetimes (corral.client.dates, compiled by ``make native``)."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.client import dates, metadata
from corral.protocol.session import utcnow


def test_a_wire_date_is_read_as_an_aware_datetime_and_anything_else_as_none() -> None:
    stamp = utcnow()
    parsed = dates.wire_date(stamp)
    assert parsed == datetime.fromisoformat(stamp) and parsed is not None
    assert parsed.tzinfo is not None
    assert dates.parse_date(stamp) == parsed
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for read in (dates.wire_date, dates.parse_date):
        assert read(moment) is moment
        assert read("not a date") is None
        assert read(None) is None
        assert read(17) is None


def test_the_metadata_module_reads_dates_with_the_same_functions() -> None:
    assert metadata.parse_date is dates.parse_date
    assert metadata.wire_date is dates.wire_date
