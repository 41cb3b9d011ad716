"""Where an engine says it runs, from its environment."""

from __future__ import annotations

import os
import socket

from corral.engine.placement import engine_placement


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
