"""The held replies' deadline timer (corral.engine.alarm): a real timerfd, polled."""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Iterator

import pytest

from corral.engine.alarm import Alarm, open_alarm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd: Linux")
WAIT = 10.0  # every wait bounded


@pytest.fixture
def alarm() -> Iterator[Alarm]:
    opened = open_alarm()
    assert opened is not None
    yield opened
    opened.close()


def readable(alarm: Alarm, timeout: float = 0.0) -> bool:
    return bool(select.select([alarm.fd], [], [], timeout)[0])


def test_it_fires_at_its_deadline_and_is_cleared_by_a_read(alarm: Alarm) -> None:
    armed_at = time.monotonic()
    alarm.arm(armed_at + 0.02)
    assert readable(alarm, WAIT)
    assert time.monotonic() >= armed_at + 0.02  # time.monotonic's clock is the timer's
    assert alarm.clear()
    assert not readable(alarm)
    assert not alarm.clear()  # nothing more to read: no error either


def test_a_deadline_already_past_fires_at_once(alarm: Alarm) -> None:
    alarm.arm(time.monotonic() - 1.0)
    assert readable(alarm, WAIT)


def test_disarming_cancels_it_even_after_it_fired_unread(alarm: Alarm) -> None:
    alarm.arm(time.monotonic() + 60.0)
    alarm.disarm()
    assert not readable(alarm)
    alarm.arm(time.monotonic() - 1.0)
    assert readable(alarm, WAIT)
    alarm.disarm()  # the held replies left before the reader woke: it must find nothing
    assert not readable(alarm)
    assert not alarm.clear()


def test_arming_again_replaces_the_deadline(alarm: Alarm) -> None:
    alarm.arm(time.monotonic() - 1.0)
    alarm.arm(time.monotonic() + 60.0)  # a later batch's deadline
    assert not readable(alarm)
    alarm.arm(time.monotonic())
    assert readable(alarm, WAIT)
