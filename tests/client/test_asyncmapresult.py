"""AsyncMapResult (corral/client/asyncmapresult.py): parts joined in order, items as their
part arrives. No sockets: replies made by hand, as in test_asyncresult.py, whose helpers
these tests share."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import corral
from corral.client import asyncresult
from corral.client.asyncmapresult import AsyncMapResult
from corral.client.records import Records
from corral.errors import RemoteError
from tests.client.test_asyncresult import fail, ok, raised, request


def test_the_class_is_importable_where_ipyparallel_has_it() -> None:
    """From the package, the client package and the ``asyncresult`` module, as one class."""
    from corral.client import AsyncMapResult as from_client
    from corral.client.asyncresult import AsyncMapResult as from_module

    assert corral.AsyncMapResult is from_client is from_module is AsyncMapResult
    assert "AsyncMapResult" in asyncresult.__all__
    with pytest.raises(AttributeError, match="no attribute 'AsyncMapResults'"):
        asyncresult.AsyncMapResults  # noqa: B018 - the attribute lookup is the test


def test_map_result_joins_parts_and_iterates_in_order() -> None:
    records = Records()
    reqs = [request(records, None, channel="task") for _ in range(3)]
    ar = AsyncMapResult(records, [r.msg_id for r in reqs], fname="square")
    seen: list[int] = []
    consumer = threading.Thread(target=lambda: seen.extend(ar))
    consumer.start()
    for index in (2, 1, 0):
        records.handle_reply(ok(reqs[index], [index * 2, index * 2 + 1], None))
    consumer.join(10)
    assert not consumer.is_alive()
    assert seen == [0, 1, 2, 3, 4, 5] == ar.get(0)
    assert ar[3] == 3


def test_unordered_map_iterates_in_completion_order() -> None:
    records = Records()
    reqs = [request(records, None, channel="task") for _ in range(3)]
    ar = AsyncMapResult(records, [r.msg_id for r in reqs], ordered=False)
    records.handle_reply(ok(reqs[2], ["c"], None))
    iterator = iter(ar)
    assert next(iterator) == "c"  # the only one done: no waiting for the first
    records.handle_reply(ok(reqs[0], ["a"], None))
    assert next(iterator) == "a"
    records.handle_reply(ok(reqs[1], ["b"], None))
    assert list(iterator) == ["b"]
    assert ar.get(0) == ["a", "b", "c"]


def test_map_of_numpy_parts_concatenates_and_empty_map_is_done() -> None:
    records = Records()
    reqs = [request(records, e) for e in (0, 1)]
    ar = AsyncMapResult(records, [r.msg_id for r in reqs], fname="gather")
    records.handle_reply(ok(reqs[0], np.arange(3), 0))
    records.handle_reply(ok(reqs[1], np.arange(3, 5), 1))
    assert ar.get(0).tolist() == [0, 1, 2, 3, 4]
    empty = AsyncMapResult(records, [])
    assert empty.ready() and empty.get(0) == []


def test_map_error_raises_when_iteration_reaches_it() -> None:
    records = Records()
    reqs = [request(records, None, channel="task") for _ in range(2)]
    ar = AsyncMapResult(records, [r.msg_id for r in reqs])
    records.handle_reply(ok(reqs[0], [1], None))
    records.handle_reply(fail(reqs[1], raised(RuntimeError("no")), None))
    iterator = iter(ar)
    assert next(iterator) == 1
    with pytest.raises(RemoteError, match="no"):
        next(iterator)
