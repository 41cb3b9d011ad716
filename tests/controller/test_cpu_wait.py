"""Reading how long a process beside the scheduler ran and waited for a CPU
(corral.controller.cpu_wait), with real processes: busy, asleep, and two busy ones sharing one
CPU (each waits while the other runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.controller.cpu_wait import LocalEngines, read_schedstat
from corral.engine.placement import cpu_share

BUSY = "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True: pass\n"
ASLEEP = "import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(60)\n"


@contextmanager
def child(code: str, cpu: int | None = None) -> Iterator[int]:
    """A Python child running ``code`` (pinned to ``cpu``), its pid once it said it is ready."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        yield process.pid
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def grown(pid: int, seconds: float) -> tuple[float, float, float]:
    """Seconds ``pid`` ran and waited for a CPU over at least ``seconds`` of wall time, and
    the wall time it was."""
    before = read_schedstat(pid)
    started = time.monotonic()
    time.sleep(seconds)
    after = read_schedstat(pid)
    elapsed = time.monotonic() - started
    assert before is not None and after is not None
    return (after[0] - before[0]) / 1e9, (after[1] - before[1]) / 1e9, elapsed


def test_a_busy_process_runs_and_a_sleeping_one_neither_runs_nor_waits() -> None:
    with child(BUSY) as busy, child(ASLEEP) as asleep:
        ran, _, _ = grown(busy, 0.3)
        assert ran > 0.05
        ran, waited, _ = grown(asleep, 0.3)
        assert ran < 0.01 and waited < 0.01


def test_two_busy_processes_on_one_cpu_each_wait_for_it() -> None:
    """What the packing calls starved: runnable, and waiting for a CPU another one holds."""
    cpu = min(os.sched_getaffinity(0))
    with child(BUSY, cpu) as first, child(BUSY, cpu):
        ran, waited, elapsed = grown(first, 0.5)
        assert waited > 0.1
        assert ran + waited <= elapsed + 0.05  # one CPU's time, shared


def test_a_gone_or_unreadable_process_reads_as_none(tmp_path: Path) -> None:
    with child(ASLEEP) as pid:
        pass
    assert read_schedstat(pid) is None
    thread = tmp_path / "7" / "task" / "7"
    thread.mkdir(parents=True)
    (thread / "schedstat").write_text("not numbers\n")
    assert read_schedstat(7, str(tmp_path)) is None
    (thread / "schedstat").write_text("")
    assert read_schedstat(7, str(tmp_path)) is None
    other = tmp_path / "7" / "task" / "8"
    other.mkdir()
    (other / "schedstat").write_text("300 40 2\n")  # the threads that can be read, summed
    assert read_schedstat(7, str(tmp_path)) == (300, 40)


def test_every_thread_of_the_process_counts() -> None:
    """A process whose main thread sleeps while another thread works (an engine's I/O thread
    receiving its tasks) has run: the main thread's own statistics would say it did not."""
    code = (
        "import sys, threading, time\n"
        "threading.Thread(target=lambda: [None for _ in iter(int, 1)], daemon=True).start()\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(60)\n"
    )
    with child(code) as pid:
        main = Path(f"/proc/{pid}/schedstat")
        main_before = int(main.read_text().split()[0])
        ran, _, _ = grown(pid, 0.3)
        main_ran = (int(main.read_text().split()[0]) - main_before) / 1e9
        assert ran > 0.05
        assert main_ran < ran / 4  # its main thread, asleep, hardly ran meanwhile


@pytest.mark.parametrize(
    ("change", "readable"),
    [
        ({}, True),
        ({"machine": "boot:another-kernel"}, False),
        ({"pid_ns": "pid:[1]"}, False),
        ({"pid_ns": None}, False),
        ({"pid": "12"}, False),
        ({"pid": 0}, False),
        ({"pid": True}, False),
        ({"pid": os.getpid()}, False),  # the scheduler itself is no engine
    ],
)
def test_only_an_engine_in_this_kernel_and_pid_namespace_is_read(
    change: dict[str, object], readable: bool
) -> None:
    local = LocalEngines()
    reported = {**cpu_share(), "pid": 4242, **change}
    assert local.pid(reported) == (4242 if readable else None)


def test_without_a_pid_namespace_nothing_is_read() -> None:
    local = LocalEngines()
    local.namespace = None  # where the system tells none (a namespace of None is looked up)
    assert local.pid({**cpu_share(), "pid": 4242}) is None
