"""Launchers: from `corral start --daemon --engines X -n N` to a client that sees all N engines.

Runs, in order: local 16, mpi 16, slurm 16 (a private one-node Slurm started here, as in the
tests), then local 128 and mpi 128 on this 2-core machine. For each: the start-up time (from
running the command to a client that sees every engine), one task on every engine (for mpi an
allreduce across all ranks, checked), the engines' total RSS, the time `corral stop` takes,
and a check that nothing is left (no process naming the cluster folder, squeue empty).
Needs root for Slurm (as the tests do) and mpi4py built against the machine's MPICH.

Run: `.bench-venv/bin/python bench/bench_launchers.py` (or `.venv/bin/python ...`; ~5 min);
`... bench_launchers.py mpi:16 slurm:16` runs only those.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from common import final_process_check, machine_load, print_table, write_results

from corral.client.client import Client
from tools.slurm import install as install_slurm
from tools.slurm import jobs, running_slurm

RUNS = [("local", 16), ("mpi", 16), ("slurm", 16), ("local", 128), ("mpi", 128)]
START_TIMEOUT = 600.0


def allreduce_of_ranks() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return int(comm.allreduce(comm.Get_rank() + 1))


def corral(*args: str, env: dict[str, str], timeout: float = START_TIMEOUT) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)} failed: {done.stderr[-3000:]}")
    return done.stdout


def leftovers(folder: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(folder) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{process.pid} {cmdline[:100]}")
    return found


def one_run(launcher: str, n: int, base: Path, env: dict[str, str]) -> dict[str, Any]:
    cluster_id = f"{launcher}-{n}"
    where = ["--cluster-dir", str(base), "--cluster-id", cluster_id]
    began = time.monotonic()
    corral("start", "--daemon", "--engines", launcher, "-n", str(n), *where, env=env)
    folder = base / cluster_id
    with Client(connection_file=folder / "corral-client.json", timeout=60) as rc:
        rc.wait_for_engines(n, timeout=START_TIMEOUT)
        started = time.monotonic() - began
        if launcher == "mpi":
            total = n * (n + 1) // 2
            assert rc[:].apply_sync(allreduce_of_ranks) == [total] * n, "allreduce is wrong"
        else:
            assert rc[:].apply_sync(lambda: 1) == [1] * n
        info = rc.engine_info()
        assert {e["launcher"] for e in info.values()} == {launcher}
        rss = 0
        for fields in info.values():
            try:
                rss += psutil.Process(fields["pid"]).memory_info().rss
            except psutil.Error:
                pass
    stop_began = time.monotonic()
    corral("stop", *where, env=env)
    stopped = time.monotonic() - stop_began
    deadline = time.monotonic() + 30
    while (left := leftovers(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)  # engines of a cancelled job may take a moment to be reaped
    queued = jobs(env) if launcher == "slurm" else []
    return {
        "launcher": launcher,
        "engines": n,
        "start_to_all_seen_s": round(started, 2),
        "stop_s": round(stopped, 2),
        "engine_rss_mb_each": round(rss / n / 2**20, 1),
        "left_behind": left + [f"slurm job {job}" for job in queued],
    }


def main() -> int:
    load_before = machine_load("before", wait=60)
    install_slurm()
    runs = [(w.split(":")[0], int(w.split(":")[1])) for w in sys.argv[1:]] or RUNS
    results = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-launch-")))
        env = stack.enter_context(running_slurm(base / "slurm"))
        for launcher, n in runs:
            result = one_run(launcher, n, base, env)
            print(json.dumps(result), flush=True)
            results.append(result)
    rows = [
        (
            r["launcher"],
            r["engines"],
            r["start_to_all_seen_s"],
            r["stop_s"],
            r["engine_rss_mb_each"],
            "none" if not r["left_behind"] else "; ".join(r["left_behind"]),
        )
        for r in results
    ]
    print_table(
        "corral start --daemon --engines LAUNCHER -n N: seconds to a client seeing all N",
        ["launcher", "engines", "start (s)", "stop (s)", "RSS/engine (MB)", "left behind"],
        rows,
    )
    strays = final_process_check()
    write_results(
        "launchers",
        {
            "runs": results,
            "load_before": load_before,
            "load_after": machine_load("after"),
            "strays": strays,
        },
    )
    return 0 if not strays and not any(r["left_behind"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
