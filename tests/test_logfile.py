"""Rotating process logs: bounded files, and raw stdout/stderr follow the current file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, os, sys
from corral.logfile import log_to_file
log_to_file(sys.argv[1], "INFO", max_bytes=2000, backups=2)
for index in range(400):
    logging.getLogger("corral.test").info("line %d %s", index, "x" * 40)
    if index % 10 == 0:
        os.write(2, f"raw stderr {index}\\n".encode())
print("last words on stdout", flush=True)
"""


def test_logs_rotate_and_raw_output_follows(tmp_path: Path) -> None:
    path = tmp_path / "engine-0.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # everything went to the log file
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["engine-0.log", "engine-0.log.1", "engine-0.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2000 + 200, name
    current = path.read_text()
    assert "line 399" in current and "last words on stdout" in current
    assert "raw stderr 390" in current
