"""corral.priority: lowering the CPU priority of chosen threads, and of no other."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest

from corral import priority

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="threads have their own nice value on Linux"
)


def nice_of(thread: threading.Thread) -> int:
    assert thread.native_id is not None
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)


@pytest.fixture
def waiting_thread() -> Iterator[threading.Thread]:
    """A started thread that waits until the test ends."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, args=(30,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        done.set()
        thread.join(30)


def test_only_the_given_threads_are_lowered(waiting_thread: threading.Thread) -> None:
    main_before = nice_of(threading.current_thread())
    before = nice_of(waiting_thread)
    values = priority.lower([waiting_thread], 3)
    assert values == [min(priority.LOWEST, before + 3)]
    assert nice_of(waiting_thread) == values[0]
    assert nice_of(threading.current_thread()) == main_before  # the process is untouched


def test_steps_add_up_and_stop_at_the_lowest(waiting_thread: threading.Thread) -> None:
    priority.lower([waiting_thread], 15)
    priority.lower([waiting_thread], 15)
    assert nice_of(waiting_thread) == priority.LOWEST


def test_no_steps_change_nothing(waiting_thread: threading.Thread) -> None:
    before = nice_of(waiting_thread)
    assert priority.lower([waiting_thread], 0) == []
    assert nice_of(waiting_thread) == before


def test_threads_not_running_are_skipped() -> None:
    never_started = threading.Thread(target=lambda: None)
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join(30)
    assert priority.lower([never_started, ended], 5) == []
