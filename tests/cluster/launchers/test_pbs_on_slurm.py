"""The PBS launcher's commands against a real scheduler: Slurm's PBS/Torque compatibility
layer (Debian's slurm-wlm-torque: qsub, qstat and qdel over the test Slurm, and sbatch reading
the #PBS lines of the job script). No Torque or OpenPBS can be installed here, so this is the
closest real system: it runs the launcher's script, job-array directive, job id parsing, state
query and cancel for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from corral.client.client import Client
from tests.polling import until
from tools import slurm as slurm_tool
from tools.slurm import jobs

from .conftest import corral
from .test_mpi import processes_mentioning


@pytest.fixture(scope="module")
def pbs_commands() -> None:
    if shutil.which("qsub") is None:
        slurm_tool.install(("slurm-wlm-torque",))
    assert "slurm" in Path(shutil.which("qsub") or "").read_text(errors="replace").lower()


@pytest.mark.timeout(240)
def test_pbs_job_array_through_slurms_pbs_layer(
    tmp_path: Path, slurm_env: dict[str, str], pbs_commands: None
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "pbs2"]
    start = corral(
        "start", "--daemon", "--engines", "pbs", "-n", "2", "--heartbeat-period", "0.5",
        *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "pbs2"
        job_id = json.loads((folder / "cluster.json").read_text())["launchers"][0]["job_id"]
        assert (folder / "engines-pbs.sh").read_text().count("#PBS -t 1-2") == 1
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=90)
            info = rc.engine_info()
            assert {e["launcher"] for e in info.values()} == {"pbs"}
            assert {e["job_id"] for e in info.values()} == {job_id}  # the array's id
        listing = corral("list", env=env).stdout
        assert f"pbs launcher, 2 engines; job {job_id} R" in listing, listing
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    # qstat names the array by its first job id only: an element Slurm is still completing
    # may outlast the stop by a moment, never for long
    until(lambda: jobs(env) == [], 60, "the cancelled array to leave squeue")
    assert processes_mentioning(tmp_path) == []
    assert not list(Path.cwd().glob("engines-pbs.sh.*"))  # no output file outside the folder
