"""The rule for direct replies the engine's ROUTER refused (corral.engine.unrouted), alone."""

from __future__ import annotations

import pytest

from corral.engine.unrouted import KEEP_FOR, RETRY_AT_MOST, RETRY_EVERY, UnroutedReplies


def test_refused_replies_are_kept_dated_by_their_first_refusal_and_given_up_after_keep_for() -> (
    None
):
    unrouted = UnroutedReplies()
    assert len(unrouted) == 0 and unrouted.take(0.0) == ([], 0)
    unrouted.keep([(None, [b"a"]), (None, [b"b"])], now=100.0)
    assert len(unrouted) == 2 and unrouted.kept == 2
    retried, given_up = unrouted.take(101.0)
    assert retried == [(100.0, [b"a"]), (100.0, [b"b"])] and given_up == 0
    assert len(unrouted) == 0
    # refused again (tagged with their first refusal), and a new one: counted once each
    unrouted.keep([*retried, (None, [b"c"])], now=102.0)
    assert unrouted.kept == 3
    retried, given_up = unrouted.take(100.0 + KEEP_FOR + 0.5)
    assert retried == [(102.0, [b"c"])] and given_up == 2 and unrouted.dropped == 2


def test_the_next_try_comes_soon_after_a_refusal_then_less_often() -> None:
    unrouted = UnroutedReplies()
    unrouted.keep([(None, [b"a"])], now=10.0)
    assert unrouted.next_try(10.0) == RETRY_EVERY
    assert unrouted.next_try(10.2) == pytest.approx(0.1)  # half the oldest one's age
    assert unrouted.next_try(30.0) == RETRY_AT_MOST
