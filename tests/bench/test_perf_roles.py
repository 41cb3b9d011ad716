"""bench/perf_roles.py: ``perf script`` output read into per-role samples and reported per
task (the reading is plain text in, counts out: no perf needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "perf_roles.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("perf_roles", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_roles"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


SCRIPT = """\
 101
\t    15cd siftup (/usr/lib/_heapq.so)
\t  181ee2 CPyDef_task_queues___TaskQueues___pop_for+0x12 (/x/_native__mypyc.so)
\t  25b3b6 CPyDef_scheduler_shell___SchedulerShell____on_engine_reply (/x/_native__mypyc.so)

 101
\t    1f00 [unknown] (/usr/lib/libzmq.so.5)
\t  25b3b6 CPyDef_scheduler_shell___SchedulerShell____on_engine_reply (/x/_native__mypyc.so)

 202
\t    15cd poll (/usr/lib/libc.so.6)

 999
\t    15cd other (/usr/lib/libc.so.6)
"""


def test_samples_are_summed_per_role_inclusive_once_per_sample() -> None:
    perf_roles = load()
    found = perf_roles.read_samples(SCRIPT.splitlines(), {101: "scheduler", 202: "engines"})
    assert set(found) == {"scheduler", "engines"}  # thread 999 belongs to no role
    scheduler = found["scheduler"]
    assert scheduler.total == 2
    assert scheduler.inclusive["CPyDef_scheduler_shell___SchedulerShell____on_engine_reply"] == 2
    assert scheduler.inclusive["CPyDef_task_queues___TaskQueues___pop_for"] == 1  # offset cut
    assert scheduler.leaves == {"siftup": 1, "?libzmq.so.5": 1}
    assert found["engines"].leaves == {"poll": 1}


def test_report_gives_microseconds_per_task() -> None:
    perf_roles = load()
    found = perf_roles.read_samples(SCRIPT.splitlines(), {101: "scheduler"})
    # 2 samples at 100 per second over 1,000 tasks: 20 us per task
    lines = perf_roles.report(found, frequency=100, tasks=1000)
    assert "scheduler: 20.0 us per task sampled (perf)" in lines[0]
    assert any("10.00  _task_queues___TaskQueues___pop_for" in line for line in lines)
    assert any(
        "20.00  _scheduler_shell___SchedulerShell____on_engine_reply" in line for line in lines
    )
