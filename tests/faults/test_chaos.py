"""The chaos run (bench/chaos.py) at a size `make test` affords: load-balanced tasks with
retries=2 while a seeded loop SIGKILLs random engines and twice the controller. Every task ends
with exactly one final result, the Hub holds one finished record per task, no wait hung, and
nothing is left running. The full 100,000-task run is the same script with --tasks 100000."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
TASKS = 1500


@pytest.mark.timeout(600)
def test_chaos_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    process = subprocess.Popen(
        # tasks of 5 ms, an engine kill every 125: three fall before the first controller kill
        [
            sys.executable,
            str(SCRIPT),
            "--tasks",
            str(TASKS),
            "--seed",
            "7",
            "--kill-every",
            str(TASKS // 12),
            "--task-ms",
            "5",
            "--json",
            str(out),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = process.communicate(timeout=540)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:  # left open when communicate timed out
            process.stdout.close()
    summary = json.loads(out.read_text())
    print(json.dumps(summary, indent=2))
    assert summary["controller_kills"] == 2 and summary["engine_kills"] >= 3, summary
    assert not summary["hung"] and not summary["chaos_errors"], summary
    assert summary["lost"] == 0 and summary["wrong_values"] == 0, summary
    assert sum(summary["outcomes"].values()) == TASKS, summary
    hub = summary["hub"]
    assert hub["records"] == TASKS and hub["missing"] == hub["duplicated"] == hub["pending"] == 0
    assert summary["left_behind"] == [], summary
    assert process.returncode == 0, log[-3000:]


MIXED = Path(__file__).resolve().parents[2] / "bench" / "chaos_mixed.py"


@pytest.mark.timeout(300)
def test_mixed_chaos_finds_no_fault(tmp_path: Path) -> None:
    """bench/chaos_mixed.py at a size `make test` affords: direct applies (some through
    shared memory), push/pull, load-balanced maps and another client's get_result while
    engines and the controller are SIGKILLed: no call hangs, no value is wrong, no reply's
    buffers are refused, nothing is left running."""
    out = tmp_path / "mixed.json"
    process = subprocess.run(
        [
            sys.executable,
            str(MIXED),
            *("--rounds", "400", "--until-kills", "4", "--seed", "4", "--json", str(out)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=270,
        check=False,
    )
    summary = json.loads(out.read_text())
    assert summary["kills"].get("engine", 0) >= 4, summary
    assert summary["fault_count"] == 0 and summary["left_behind"] == [], summary
    assert summary["outcomes"].get("ok", 0) >= 300, summary
    assert process.returncode == 0, process.stdout[-3000:]
