"""The controller's side of the scheduler's pipe (corral/controller/scheduler_process.py),
on real pipes and a real child process; the whole controller is tested in test_app.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import IO

import pytest

from corral.controller.scheduler_process import STOP_GRACE, final_counts, read_json_line
from corral.lifetime import terminate


@pytest.fixture
def pipe() -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        yield reader, writer


def test_a_line_is_read_as_an_object(pipe: tuple[IO[bytes], IO[bytes]]) -> None:
    reader, writer = pipe
    writer.write(b'{"task": 1, "task_engine": 2}\n[3]\n')
    writer.flush()
    assert read_json_line(reader, timeout=5) == {"task": 1, "task_engine": 2}
    assert read_json_line(reader, timeout=5) is None  # JSON, but not an object


def test_nothing_within_the_timeout_or_an_ended_stream_is_none(
    pipe: tuple[IO[bytes], IO[bytes]],
) -> None:
    reader, writer = pipe
    assert read_json_line(reader, timeout=0.01) is None
    writer.close()
    assert read_json_line(reader, timeout=5) is None


def test_a_stopped_process_gives_the_counts_of_its_last_line() -> None:
    """Stopped with SIGTERM, which it answers with its counts, as the scheduler does."""
    script = (
        "import json, signal, sys\n"
        "def stop(*_):\n"
        "    print(json.dumps({'counts': {'received': 3}}), flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        terminate(process, STOP_GRACE)
        assert process.returncode == 0
        assert final_counts(process) == {"received": 3}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
