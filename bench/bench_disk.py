"""Disk left behind by a new user's script (issue 18): RUNS times ``with corral.Cluster(n=2)``,
each pushing one 100 MB array to both engines and pulling it back, all in a fresh
``CORRAL_DIR``. Reports the folders and bytes left there afterwards, and the peak while running.

Target: nothing left (0 folders, 0 bytes) and a peak of at most one cluster's folder.
With ``keep`` as second argument the clusters are ``Cluster(n=2, keep=True)``: their folders
stay, and what they hold shows the store's per-result buffer limit at work.

Run: `.bench-venv/bin/python bench/bench_disk.py [RUNS] [keep]` (default 30; 5-10 minutes).
To measure another version of corral, put its source first on PYTHONPATH; the script uses
only ``corral.Cluster`` and views, which every version has.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table, write_results

import corral

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
KEEP = sys.argv[2:3] == ["keep"]
ARRAY_BYTES = 100 * 1000 * 1000


def disk_usage(base: Path) -> tuple[int, int]:
    """Cluster folders under ``base`` and the bytes they hold on disk (allocated blocks)."""
    folders = [p for p in base.iterdir() if p.is_dir()]
    size = 0
    for root, _, files in os.walk(base):
        for name in files:
            try:
                size += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return len(folders), size


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-disk-bench-"))
    os.environ["CORRAL_DIR"] = str(base)
    array = np.random.default_rng(0).random(ARRAY_BYTES // 8)
    peak = 0
    started = time.perf_counter()
    try:
        for run in range(RUNS):
            with corral.Cluster(n=2, **({"keep": True} if KEEP else {})) as rc:
                dv = rc[:]
                dv.push({"block": array}, block=True)
                back = dv.pull("block", block=True)
                assert all(np.array_equal(b, array) for b in back), "a pulled array differs"
                rc.result_status(rc.history)  # the Hub has recorded every reply
                peak = max(peak, disk_usage(base)[1])
            folders, size = disk_usage(base)
            print(f"run {run + 1}/{RUNS}: {folders} folder(s), {size / 1e6:,.0f} MB left")
        elapsed = time.perf_counter() - started
        folders, size = disk_usage(base)
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    print_table(
        f"disk left in CORRAL_DIR after {RUNS} runs of Cluster(n=2{', keep=True' if KEEP else ''})"
        " + 100 MB push/pull",
        ["measure", "value"],
        [
            ["folders left", folders],
            ["MB left", size / 1e6],
            ["MB in use during a run (after the pull)", peak / 1e6],
            ["seconds per run", elapsed / RUNS],
            ["target: nothing left", "met" if folders == 0 and size == 0 else "NOT met"]
            if not KEEP
            else ["target: under 1 MB per kept folder", "met" if size < RUNS * 1e6 else "NOT met"],
        ],
    )
    write_results(
        "disk-keep" if KEEP else "disk",
        {
            "runs": RUNS,
            "keep": KEEP,
            "array_bytes": ARRAY_BYTES,
            "corral": str(Path(corral.__file__).parent),
            "folders_left": folders,
            "bytes_left": size,
            "peak_bytes": peak,
            "seconds_per_run": elapsed / RUNS,
        },
    )


if __name__ == "__main__":
    main()
