"""Pages of a query's records (find_page): every backend agrees with find_records."""

from __future__ import annotations

from typing import Any

import pytest

from corral.controller.store import ResultStore
from corral.errors import QueryError

from .test_store_api import DATA, QUERIES


@pytest.fixture
def loaded(store: ResultStore) -> ResultStore:
    for record in DATA:
        store.add_record(record["msg_id"], record)
    return store


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=[str(q) for q, _ in QUERIES])
def test_pages_slice_the_query_newest_first(
    loaded: ResultStore, query: dict[str, Any], expected: list[str]
) -> None:
    newest = expected[::-1]
    for limit, skip in ((1, 0), (2, 1), (10, 0), (3, 3), (5, 9)):
        page, total = loaded.find_page(query, ["status"], limit=limit, skip=skip)
        assert total == len(expected)
        assert [r["msg_id"] for r in page] == newest[skip : skip + limit]
    oldest, _ = loaded.find_page(query, None, limit=2, newest_first=False)
    assert [r["msg_id"] for r in oldest] == expected[:2]


def test_page_records_are_projected_like_find_records(loaded: ResultStore) -> None:
    (page,), total = loaded.find_page({"status": "ok"}, ["status", "tag"], limit=1)
    assert total == 1 and page == {"msg_id": "m0", "status": "ok", "tag": "a"}
    (whole,), _ = loaded.find_page({"status": "ok"}, None, limit=1)
    assert whole == loaded.find_records({"status": "ok"})[0]


@pytest.mark.parametrize(("limit", "skip"), [(0, 0), (-1, 0), (1, -1), (True, 0), (10_001, 0)])
def test_bad_pages_raise_query_error(store: ResultStore, limit: Any, skip: Any) -> None:
    with pytest.raises(QueryError):
        store.find_page({}, limit=limit, skip=skip)


def test_every_page_of_a_table_both_ways(store: ResultStore) -> None:
    """Pages near either end (a backend may read the far half from the other end)."""
    for i in range(23):
        store.add_record(f"m{i:02d}", {"status": "ok" if i % 3 else "error"})
    for query in ({}, {"status": "error"}):
        everything = [r["msg_id"] for r in store.find_records(query)]
        for newest_first in (True, False):
            ordered = everything[::-1] if newest_first else everything
            for limit in (1, 5, 7, 50):
                for skip in range(0, 26):
                    page, total = store.find_page(
                        query, ["status"], limit=limit, skip=skip, newest_first=newest_first
                    )
                    assert total == len(everything)
                    assert [r["msg_id"] for r in page] == ordered[skip : skip + limit]
