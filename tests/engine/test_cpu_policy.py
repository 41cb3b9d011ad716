"""The engine's CPU scheduling policy (corral.engine.cpu_policy): with ``--batch-scheduling``,
SCHED_BATCH on Linux, set before the engine's threads start so that every one of them has it;
without, the default. The local launcher asks for it when engines outnumber the cores."""

from __future__ import annotations

import logging
import os
import sys
import threading

import pytest

from corral.cluster.launchers.local import scheduling_args
from corral.engine.cpu_policy import use_batch_scheduling
from tests.engine.controller_double import FakeController

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's"
)


def thread_policies(pid: int) -> dict[int, int]:
    """The scheduling policy of every thread of ``pid``, by thread id."""
    return {int(tid): os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@linux_only
def test_the_calling_thread_and_the_threads_it_starts_get_sched_batch() -> None:
    """Run on a thread of its own, so that the test process keeps its policy."""
    seen: dict[str, int | bool] = {}

    def started_later() -> None:
        seen["child"] = os.sched_getscheduler(0)

    def body() -> None:
        seen["done"] = use_batch_scheduling(logging.getLogger("test"))
        seen["self"] = os.sched_getscheduler(0)
        child = threading.Thread(target=started_later)
        child.start()
        child.join(10)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == {"done": True, "self": os.SCHED_BATCH, "child": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread: untouched


def test_without_sched_setscheduler_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_setscheduler", raising=False)
    assert use_batch_scheduling(logging.getLogger("test")) is False


@linux_only
def test_every_thread_of_a_running_engine_is_under_sched_batch(
    controller: FakeController,
) -> None:
    engine = controller.start_engine("--batch-scheduling")
    controller.register(engine_id=0)
    controller.wait_pong()  # registered, its I/O thread and heart answer: all threads started
    policies = thread_policies(engine.pid)
    assert len(policies) > 1
    assert set(policies.values()) == {os.SCHED_BATCH}, policies


@linux_only
def test_by_default_an_engine_keeps_the_default_policy(controller: FakeController) -> None:
    engine = controller.start_engine()
    controller.register(engine_id=0)
    controller.wait_pong()
    assert set(thread_policies(engine.pid).values()) == {os.SCHED_OTHER}


def test_the_local_launcher_asks_for_it_only_when_engines_outnumber_the_cores() -> None:
    assert scheduling_args(64, 2) == scheduling_args(3, 2) == ["--batch-scheduling"]
    assert scheduling_args(2, 2) == scheduling_args(1, 8) == []
    assert scheduling_args(64, None) == []  # cores unknown: the default
