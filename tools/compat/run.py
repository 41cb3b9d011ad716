"""Run ipyparallel's shipped tests against corral and print the pass count per file.

Usage (from the repository root, in the compat environment that ``make compat`` builds)::

    .compat-venv/bin/python tools/compat/run.py [--json OUT] [pytest args...]

The peer's test modules run unmodified from the installed wheel, through the pytest plugin
``corral_ipp_shim`` (this folder). Only files that test public behaviour are run; the others
test ipyparallel's own internals (its serializer, its result-store classes, its launchers and
command-line applications) and would exercise ipyparallel rather than corral.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

PUBLIC = [
    "test_asyncresult",
    "test_client",
    "test_dependency",
    "test_executor",
    "test_joblib",
    "test_label",
    "test_lbview",
    "test_magics",
    "test_remotefunction",
    "test_view",
    "test_view_broadcast",
]
INTERNAL = {
    "test_async": "ipyparallel._async.AsyncFirst, a private helper class",
    "test_canning": "ipyparallel's serializer (ipyparallel.serialize.canning)",
    "test_serialize": "ipyparallel's serializer (ipyparallel.serialize)",
    "test_util": "ipyparallel.util helpers",
    "test_db": "ipyparallel's DictDB/SQLiteDB classes, used directly",
    "test_mongodb": "ipyparallel's MongoDB store class, used directly",
    "test_apps": "ipyparallel's ipcontroller/ipengine/ipcluster applications",
    "test_cluster": "ipyparallel's traitlets-configured Cluster and its launchers",
    "test_launcher": "ipyparallel's launcher classes",
    "test_shellcmd": "ipyparallel's shell-command launcher",
    "test_slurm": "ipyparallel's Slurm launcher",
    "test_ssh": "ipyparallel's SSH launcher",
    "test_mpi": "ipyparallel's MPI launcher",
}


def _pytest(files: list[str], extra: list[str], peer: bool) -> dict[str, Any]:
    """Run pytest on the peer's modules (``peer``: without pointing names at corral, to
    count tests only); the outcomes the shim recorded."""
    with tempfile.TemporaryDirectory() as scratch:
        outcomes_file = Path(scratch) / "outcomes.json"
        env = dict(os.environ, CORRAL_COMPAT_OUTCOMES=str(outcomes_file))
        env["CORRAL_COMPAT_PEER"] = "1" if peer else "0"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(HERE / "pytest.ini"),
            "--rootdir",
            scratch,
            "--continue-on-collection-errors",
            "--pyargs",
            *[f"ipyparallel.tests.{name}" for name in files],
            *extra,
        ]
        quiet = subprocess.DEVNULL if peer else None
        subprocess.run(command, env=env, cwd=scratch, check=False, stdout=quiet)
        if not outcomes_file.exists():
            raise SystemExit("pytest wrote no outcomes (it failed before running tests)")
        data: dict[str, Any] = json.loads(outcomes_file.read_text())
        return data


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", help="write per-test outcomes here")
    parser.add_argument("--files", nargs="*", default=PUBLIC, help="peer test modules to run")
    args, pytest_args = parser.parse_known_args()
    shipped = _pytest(args.files, ["--collect-only", "-q"], peer=True)["collected"]
    data = _pytest(args.files, ["-q", *pytest_args], peer=False)
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for nodeid, outcome in data["outcomes"].items():
        module, _, test = nodeid.partition("::")
        table[module]["collection error" if test == "<collection>" else outcome] += 1
    columns = ("passed", "failed", "error", "skipped")
    print(f"\n{'file':22}" + "".join(f"{c:>9}" for c in columns) + f"{'shipped':>9}  note")
    totals: collections.Counter[str] = collections.Counter()
    for name in args.files:
        row = table.get(name, collections.Counter())
        totals.update(row)
        totals["shipped"] += shipped.get(name, 0)
        note = "could not be collected" if row["collection error"] else ""
        counts = "".join(f"{row[c]:9}" for c in columns)
        print(f"{name:22}{counts}{shipped.get(name, 0):9}  {note}")
    counts = "".join(f"{totals[c]:9}" for c in columns)
    print(f"{'TOTAL':22}{counts}{totals['shipped']:9}")
    if data["missing"]:
        print(f"\nipyparallel names corral lacks: {', '.join(data['missing'])}")
    if args.json:
        data["shipped"] = shipped
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
