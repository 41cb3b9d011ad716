"""The client's worker threads (corral.client.completion.Worker), alone."""

from __future__ import annotations

import logging
import threading

import pytest

from corral.client.completion import Worker

PROMPT = 10.0


def test_calls_run_in_order_and_a_failing_one_costs_only_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker("test-worker")
    ran: list[int] = []
    done = threading.Event()

    def fail() -> None:
        raise SystemExit("even this costs one call only")

    try:
        worker.submit(lambda: ran.append(1))
        worker.submit(fail)
        worker.submit(lambda: ran.append(2))
        worker.submit(done.set)
        assert done.wait(PROMPT)
        assert ran == [1, 2]
        assert any("failed" in record.message for record in caplog.records)
    finally:
        worker.close()


def test_close_runs_what_is_queued_then_joins_and_later_calls_run_on_the_caller() -> None:
    worker = Worker("test-worker")
    gate = threading.Event()
    ran: list[str] = []
    worker.submit(lambda: gate.wait(PROMPT))
    worker.submit(lambda: ran.append("queued"))
    closer = threading.Thread(target=worker.close)
    closer.start()
    gate.set()
    closer.join(PROMPT)
    assert not closer.is_alive()
    assert ran == ["queued"]
    assert not worker._worker_thread.is_alive()  # noqa: SLF001
    caller = threading.current_thread().name
    seen: list[str] = []
    worker.submit(lambda: seen.append(threading.current_thread().name))
    assert seen == [caller]
    worker.close()  # again: nothing to do


def test_a_call_may_close_its_own_worker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    worker = Worker("test-worker")
    closed = threading.Event()

    def close_it() -> None:
        worker.close()
        closed.set()

    worker.submit(close_it)
    assert closed.wait(PROMPT)
    worker._worker_thread.join(PROMPT)  # noqa: SLF001
    assert not worker._worker_thread.is_alive()  # noqa: SLF001
    assert not caplog.records
