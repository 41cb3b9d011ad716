"""Engines as Slurm job steps on a real one-node Slurm (munged, slurmctld, slurmd started by
the session fixture): start, list, lose the job to scancel, stop, bad submissions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from corral.client.client import Client
from tests.polling import until
from tools.slurm import jobs

from .conftest import corral
from .test_mpi import processes_mentioning

SLURM_POLL = 0.1  # seconds between looks at Slurm and the Hub for a state change


@pytest.mark.timeout(240)
def test_slurm_engines_run_as_job_steps_and_stop_leaves_no_job(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "s4"]
    start = corral(
        "start", "--daemon", "--engines", "slurm", "-n", "4", "--walltime", "00:10:00",
        "--heartbeat-period", "0.5", *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "s4"
        state = json.loads((folder / "cluster.json").read_text())
        job_id = state["launchers"][0]["job_id"]
        assert jobs(env) == [job_id]
        steps = subprocess.run(
            ["squeue", "-h", "-s", "-j", job_id, "-o", "%i"],
            env=env, capture_output=True, text=True, timeout=30,
        ).stdout.split()  # fmt: skip
        assert f"{job_id}.0" in steps  # the engines are one srun step of the job
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(4, timeout=60)
            info = rc.engine_info()
            assert {e["job_id"] for e in info.values()} == {job_id}
            assert {e["launcher"] for e in info.values()} == {"slurm"}
            assert sorted(e["mpi_rank"] for e in info.values()) == [0, 1, 2, 3]
            assert rc[:].apply_sync(lambda: 6 * 7) == [42] * 4
        listing = corral("list", env=env)
        assert f"slurm launcher, 4 engines; job {job_id} RUNNING" in listing.stdout
        rows = [line.split() for line in listing.stdout.splitlines()]
        engine_rows = [row for row in rows if len(row) == 6 and row[3:5] == ["slurm", job_id]]
        assert len(engine_rows) == 4, listing.stdout
        assert {int(row[2]) for row in engine_rows} == {e["pid"] for e in info.values()}
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(240)
def test_scancel_is_noticed_and_engines_unregistered_promptly(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "lost"]
    start = corral(
        "start", "--daemon", "--engines", "slurm", "-n", "2", "--heartbeat-period", "0.5",
        *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "lost"
        job_id = json.loads((folder / "cluster.json").read_text())["launchers"][0]["job_id"]
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            subprocess.run(["scancel", job_id], env=env, check=True, timeout=30)
            cancelled = time.monotonic()
            until(
                lambda: not rc.ids,
                15,
                "the Hub to unregister the cancelled engines",
                interval=SLURM_POLL,
            )
            assert time.monotonic() - cancelled < 15  # SIGTERM: they unregister themselves
        until(
            lambda: "lost: slurm job" in corral("list", env=env).stdout,
            30,
            "corral list to say the job was lost",
            interval=SLURM_POLL,
        )
        listing = corral("list", env=env).stdout
        assert f"JOB {job_id} ON" in listing and "CANCELLED" in listing, listing
        assert "no engines registered" in listing
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []


@pytest.mark.timeout(300)
def test_a_job_over_its_walltime_is_noticed_and_listed_with_slurms_reason(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    """A one-minute walltime, Slurm's smallest, reaches the job; then the job's end is moved
    to now (``scontrol update EndTime``), so that slurmctld ends it at its next check of time
    limits (every 30 s) instead of 60 to 90 s after it started: the same TIMEOUT, reason and
    signals, without the minute's wait."""
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "late"]
    start = corral(
        "start", "--daemon", "--engines", "slurm", "-n", "2", "--walltime", "1",
        "--heartbeat-period", "0.5", "--no-dashboard", *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "late"
        job_id = json.loads((folder / "cluster.json").read_text())["launchers"][0]["job_id"]

        def job() -> str:
            return subprocess.run(
                ["scontrol", "--oneliner", "show", "job", job_id],
                env=env, capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip

        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            assert rc[:].apply_sync(lambda: "before the limit") == ["before the limit"] * 2
            assert "TimeLimit=00:01:00" in job(), job()
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "EndTime=now"],
                env=env, check=True, timeout=30,
            )  # fmt: skip
            until(
                lambda: not rc.ids,
                150,
                "the Hub to unregister the timed-out engines",
                interval=SLURM_POLL,
            )
            unregistered = time.time()

        until(
            lambda: "JobState=TIMEOUT" in job(),
            60,
            "Slurm to end the job as TIMEOUT",
            interval=SLURM_POLL,
        )
        ended = re.search(r"\bEndTime=(\S+)", job())
        assert ended is not None
        limit_hit = datetime.strptime(ended.group(1), "%Y-%m-%dT%H:%M:%S").timestamp()
        # the engines leave when Slurm ends the job (SIGTERM at the limit), not minutes later
        assert unregistered - limit_hit < 20
        until(
            lambda: "lost: slurm job" in corral("list", env=env).stdout,
            30,
            "corral list to say the job was lost",
            interval=SLURM_POLL,
        )
        listing = corral("list", env=env).stdout
        assert f"lost: slurm job {job_id} is TIMEOUT" in listing, listing
        assert "DUE TO TIME LIMIT" in listing, listing
        assert "no engines registered" in listing
        manager_log = (folder / "cluster-manager.log").read_text()
        assert f"lost: slurm engines: slurm job {job_id} is TIMEOUT" in manager_log
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(240)
def test_no_wait_returns_once_the_job_is_queued_and_engines_join_when_it_runs(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    """A job held in the queue (as on a busy cluster): `--daemon --no-wait` returns at once
    with the job id, `corral list` shows it pending, its engines register once it runs."""
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "queued"]
    began = time.monotonic()
    start = corral(
        "start", "--daemon", "--no-wait", "--engines", "slurm", "-n", "2", "--batch-line=--hold",
        "--start-timeout", "12", "--heartbeat-period", "0.5", "--no-dashboard", *where, env=env,
    )  # fmt: skip
    submitted = time.monotonic()  # the job was submitted before `start` returned
    try:
        assert start.returncode == 0, start.stderr
        assert submitted - began < 30
        folder = tmp_path / "queued"
        job_id = json.loads((folder / "cluster.json").read_text())["launchers"][0]["job_id"]
        assert f"slurm job {job_id} submitted" in start.stdout, start.stdout
        listing = corral("list", env=env).stdout
        assert f"job {job_id} PENDING (JobHeldUser)" in listing, listing
        assert "no engines registered" in listing
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            assert rc.ids == []
            # not synchronisation: the job stays queued past --start-timeout (12 s: the same
            # bound covers the controller's start, slow on a loaded machine), and the manager
            # must not give up on it
            time.sleep(max(0.0, 13 - (time.monotonic() - submitted)))
            listing = corral("list", env=env).stdout
            assert "lost" not in listing and f"job {job_id} PENDING" in listing, listing
            subprocess.run(["scontrol", "release", job_id], env=env, check=True, timeout=30)
            rc.wait_for_engines(2, timeout=60)
            assert rc[:].apply_sync(lambda: "joined later") == ["joined later"] * 2
        assert f"job {job_id} RUNNING" in corral("list", env=env).stdout
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(240)
def test_the_controller_as_a_slurm_job_of_its_own(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "ctl"]
    start = corral(
        "start", "--daemon", "--controller", "slurm", "--engines", "slurm", "-n", "2",
        "--heartbeat-period", "0.5", "--no-dashboard", *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "ctl"
        launches = json.loads((folder / "cluster.json").read_text())["launchers"]
        assert [launch.get("role", "engines") for launch in launches] == ["controller", "engines"]
        controller_job, engines_job = (launch["job_id"] for launch in launches)
        assert sorted(jobs(env)) == sorted([controller_job, engines_job])
        client_info = json.loads((folder / "corral-client.json").read_text())
        # by default it listens where other nodes reach it, with CurveZMQ on
        assert client_info["ip"] not in ("127.0.0.1", "0.0.0.0") and "curve" in client_info
        controller = psutil.Process(client_info["controller_pid"])
        assert controller.environ()["SLURM_JOB_ID"] == controller_job  # runs inside the job
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            assert (
                rc[:].apply_sync(lambda: "engines of one job, controller of another")
                == ["engines of one job, controller of another"] * 2
            )
            assert {e["job_id"] for e in rc.engine_info().values()} == {engines_job}
        listing = corral("list", env=env).stdout
        assert f"{client_info['controller_pid']} (slurm job {controller_job})" in listing
        assert f"slurm launcher, the controller; job {controller_job} RUNNING" in listing
        assert f"slurm launcher, 2 engines; job {engines_job} RUNNING" in listing
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []
    assert (tmp_path / "ctl" / "tasks.db").exists()  # the store is kept, as for any cluster
    assert not (tmp_path / "ctl" / "corral-client.json").exists()  # a clean controller stop


@pytest.mark.timeout(240)
def test_losing_the_controllers_job_stops_the_cluster_and_says_why(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "ctl-lost"]
    start = corral(
        "start", "--daemon", "--controller", "slurm", "--engines", "slurm", "-n", "1",
        "--heartbeat-period", "0.5", "--no-dashboard", *where, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr
        folder = tmp_path / "ctl-lost"
        state = json.loads((folder / "cluster.json").read_text())
        controller_job = state["launchers"][0]["job_id"]
        subprocess.run(["scancel", controller_job], env=env, check=True, timeout=30)
        # the manager notices, stops what is left (the engines' job) and exits
        manager = psutil.Process(state["manager_pid"])
        manager.wait(60)
        log = (folder / "cluster-manager.log").read_text()
        assert f"lost: slurm controller: slurm job {controller_job} is CANCELLED" in log, log
        assert "the controller exited and is not restarted" in log
        assert jobs(env) == []
    finally:
        stop = corral("stop", *where, env=env)
    assert "no running cluster ctl-lost" in stop.stderr  # the manager had stopped it all
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_rejected_controller_job_fails_start_fast_with_sbatchs_words(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    began = time.monotonic()
    try:
        result = corral(
            "start", "--controller", "slurm", "--partition", "no-such-partition", "-n", "1",
            env=env, timeout=60,
        )  # fmt: skip
    finally:
        corral("stop", env=env)
    assert result.returncode == 1
    assert "invalid partition specified: no-such-partition" in result.stderr, result.stderr
    assert time.monotonic() - began < 20
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--partition", "no-such-partition"], "invalid partition specified: no-such-partition"),
        (["--batch-line=--no-such-sbatch-option"], "unrecognized option"),
    ],
)
def test_a_rejected_job_fails_start_fast_and_leaves_nothing(
    tmp_path: Path, slurm_env: dict[str, str], flags: list[str], says: str
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    began = time.monotonic()
    try:
        result = corral("start", "--engines", "slurm", "-n", "2", *flags, env=env, timeout=60)
    finally:
        corral("stop", env=env)
    assert result.returncode == 1
    assert says in result.stderr, result.stderr
    assert time.monotonic() - began < 20
    assert jobs(env) == []
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(60)
def test_no_sbatch_on_path_is_a_clear_error(tmp_path: Path, slurm_env: dict[str, str]) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path), "PATH": "/nonexistent"}
    result = corral("start", "--engines", "slurm", "-n", "1", env=env, timeout=60)
    corral("stop", env=env)
    assert result.returncode == 1
    assert "needs `sbatch`, which is not on PATH" in result.stderr
    assert processes_mentioning(tmp_path) == []


@pytest.mark.timeout(240)
def test_stop_cancels_the_job_even_when_the_manager_was_killed(
    tmp_path: Path, slurm_env: dict[str, str]
) -> None:
    env = {**slurm_env, "CORRAL_DIR": str(tmp_path)}
    where = ["--cluster-id", "orphan"]
    start = corral("start", "--daemon", "--engines", "slurm", "-n", "1", *where, env=env)
    try:
        assert start.returncode == 0, start.stderr
        state = json.loads((tmp_path / "orphan" / "cluster.json").read_text())
        os.kill(state["manager_pid"], signal.SIGKILL)
        assert jobs(env) == [state["launchers"][0]["job_id"]]
    finally:
        stop = corral("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert jobs(env) == []
