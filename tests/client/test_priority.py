"""priority= on a real cluster: with one engine taking one task at a time, tasks queued behind
a busy engine run highest priority first, equal priorities in submission order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import running_cluster


def _stamp(name: str) -> str:
    import time

    time.sleep(0.05)
    return name


@pytest.mark.timeout(120)
def test_queued_tasks_run_by_priority(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1, controller_args=["--max-outstanding", "1"]) as cluster:
        rc = cluster.client
        view = rc.load_balanced_view()
        blocker = view.apply_async(_stamp, "blocker")
        submitted = [("low-1", 0), ("high-1", 10), ("low-2", 0), ("mid", 5), ("high-2", 10)]
        results = []
        for name, priority in submitted:
            with view.temp_flags(priority=priority):
                results.append(view.apply_async(_stamp, name))
        blocker.get(timeout=60)
        for result in results:
            result.get(timeout=60)
        order = sorted(results, key=lambda r: r.metadata["started"])
        assert [r.get() for r in order] == ["high-1", "high-2", "mid", "low-1", "low-2"]
        with pytest.raises(ValueError):
            view.priority = 1.5  # type: ignore[assignment]
