"""Where an engine says it runs, from its environment."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from corral.engine.placement import cpu_share, engine_placement, pid_namespace


def test_plain_local_engine() -> None:
    placement = engine_placement({})
    assert placement == {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "mpi_rank": None,
        "mpi_size": None,
        "launcher": "local",
        "job_id": None,
    }


def test_mpich_rank_and_size() -> None:
    placement = engine_placement({"PMI_RANK": "3", "PMI_SIZE": "8", "CORRAL_LAUNCHER": "mpi"})
    assert (placement["mpi_rank"], placement["mpi_size"], placement["launcher"]) == (3, 8, "mpi")


def test_slurm_step_task_and_array_job() -> None:
    step = engine_placement({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "42"})
    assert (step["mpi_rank"], step["mpi_size"], step["job_id"]) == (5, 16, "42")
    element = engine_placement(
        {"SLURM_PROCID": "0", "SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "41"}
    )
    assert (element["mpi_rank"], element["job_id"]) == (None, "41")  # no size: no rank


def test_mpi4py_rank_wins_and_batch_ids() -> None:
    assert engine_placement({"PMI_RANK": "1"}, mpi_rank=7)["mpi_rank"] == 7
    assert engine_placement({"PBS_JOBID": "12[3].srv"})["job_id"] == "12[3].srv"
    assert engine_placement({"LSB_JOBID": "99"})["job_id"] == "99"
    assert engine_placement({"JOB_ID": "7"})["job_id"] == "7"


def test_cpu_share_names_the_running_kernel_and_the_cpus_this_process_may_use(
    tmp_path: Path,
) -> None:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("8e1c2a9f-kernel\n")
    share = cpu_share(boot_id)
    assert share["machine"] == "boot:8e1c2a9f-kernel"
    assert share["ids"] == sorted(os.sched_getaffinity(0))
    # the scheduler reads the CPU time of engines beside it by pid, within one namespace
    assert share["pid"] == os.getpid()
    assert share["pid_ns"] == os.readlink("/proc/self/ns/pid") == pid_namespace()


def test_pid_namespace_is_none_where_the_system_tells_none(tmp_path: Path) -> None:
    assert pid_namespace(str(tmp_path / "absent")) is None


def test_cpu_share_without_a_boot_id_names_the_host(tmp_path: Path) -> None:
    share = cpu_share(tmp_path / "absent")
    assert share["machine"] == "host:" + socket.gethostname()
    assert share["ids"] and all(isinstance(cpu, int) for cpu in share["ids"])


def test_an_engine_in_a_job_says_its_batch_system_when_no_launcher_told_it() -> None:
    """A job template of the user's own (ipyparallel's docs write theirs) or a hand-written job
    script that runs ``corral engine`` without ``CORRAL_LAUNCHER``: the engine names the batch
    system of its job, not ``local`` as it used to."""
    assert engine_placement({"PBS_JOBID": "12"})["launcher"] == "pbs"
    assert engine_placement({"SLURM_JOB_ID": "4", "SLURM_PROCID": "0"})["launcher"] == "slurm"
    assert engine_placement({"LSB_JOBID": "9"})["launcher"] == "lsf"
    assert engine_placement({"JOB_ID": "7"})["launcher"] == "sge"
    # a launcher's word wins: corral start -n 4 inside an allocation runs local engines
    assert engine_placement({"SLURM_JOB_ID": "4", "CORRAL_LAUNCHER": "local"})["launcher"] == (
        "local"
    )
