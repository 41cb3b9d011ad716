"""The Client's request sending (corral.client.sending): what may go by shared memory.

The sending itself (prepare, dispatch, a gone target) runs against real clusters in
test_client.py and test_direct.py; here the decision that keeps a small call off the
shared-memory path without looking at its frames one by one."""

from __future__ import annotations

from corral.client.sending import _may_export


def test_a_call_without_buffers_never_goes_by_shared_memory() -> None:
    assert not _may_export([], 1)


def test_one_pickle_goes_by_shared_memory_from_the_threshold_on() -> None:
    assert not _may_export([b"x" * 99], 100)
    assert _may_export([b"x" * 100], 100)


def test_several_or_non_bytes_buffers_are_left_to_the_export_to_measure() -> None:
    assert _may_export([b"a", b"b"], 1_000_000)
    assert _may_export([memoryview(b"a")], 1_000_000)
