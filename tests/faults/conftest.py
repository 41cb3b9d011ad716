"""Helpers for the fault tests: child processes that always end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import Client
from corral.errors import ConnectionError
from tests.polling import until

ROOT = Path(__file__).resolve().parents[2]


def wait_for_controller(rc: Client, timeout: float = 30) -> None:
    """Until ``rc``'s Hub answers a query (a restarted controller is listening again)."""

    def answers() -> bool:
        try:
            rc.queue_status()
        except ConnectionError:
            return False
        return True

    until(answers, timeout, "the client to reach the new controller")


class Scripts:
    """Runs small Python programs as separate client processes; kills any left running. They
    run from the repository with it on their path, so they can use ``tests.polling``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen[str]] = []

    def run(self, source: str, *args: str, timeout: float = 60) -> str:
        """Run ``source`` with ``args``; its stdout. AssertionError if it fails."""
        path = self.folder / f"script-{len(self.processes)}.py"
        path.write_text(source)
        path_entries = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        process = subprocess.Popen(
            [sys.executable, str(path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path_entries)},
        )
        self.processes.append(process)
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{path.name} failed ({process.returncode}):\n{err}"
        return out

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[Scripts]:
    runner = Scripts(tmp_path)
    try:
        yield runner
    finally:
        runner.close()
