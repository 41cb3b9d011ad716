"""Job scripts and batch commands as pure functions: every batch system, no system needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cluster.launchers.base import LaunchSpec
from corral.cluster.launchers.batch import (
    GONE,
    BatchSystem,
    job_script,
    option_directives,
    render,
)
from corral.cluster.launchers.lsf import LSF
from corral.cluster.launchers.mpi import mpiexec_command
from corral.cluster.launchers.pbs import PBS
from corral.cluster.launchers.registry import ENGINE_LAUNCHERS, engine_launcher
from corral.cluster.launchers.sge import SGE
from corral.cluster.launchers.slurm import SLURM
from corral.cluster.launchers.ssh import assign_engines, parse_hosts, remote_engine_command
from corral.errors import LaunchError


def spec(n: int = 4, **options: object) -> LaunchSpec:
    return LaunchSpec(
        cluster_id="c1",
        cluster_path=Path("/shared/corral/c1"),
        engine_file=Path("/shared/corral/c1/corral-engine.json"),
        n=n,
        python="/opt/py/bin/python",
        options=options,
    )


ENGINE = "/opt/py/bin/python -m corral engine --file /shared/corral/c1/corral-engine.json"


def test_render_fills_holes_and_leaves_shell_variables_alone() -> None:
    out = render("echo ${HOME} $PATH {{n}} {{ job_name }}", {"n": "3", "job_name": "j"})
    assert out == "echo ${HOME} $PATH 3 j"


def test_render_names_an_unknown_hole() -> None:
    with pytest.raises(LaunchError, match=r"\{\{nodes\}\}.*not one of: n"):
        render("#SBATCH -N {{nodes}}", {"n": "3"})


def test_slurm_script_one_srun_step_with_every_option() -> None:
    script = job_script(
        SLURM,
        spec(
            8,
            partition="debug",
            account="physics",
            walltime="01:30:00",
            extra=["--mem=2G", "#SBATCH --exclusive"],
            srun_args="--cpu-bind=none",
        ),
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "#SBATCH --ntasks=8" in lines
    assert "#SBATCH --job-name=corral-c1" in lines
    assert "#SBATCH --partition=debug" in lines
    assert "#SBATCH --account=physics" in lines
    assert "#SBATCH --time=01:30:00" in lines
    assert "#SBATCH --mem=2G" in lines and "#SBATCH --exclusive" in lines
    assert "#SBATCH --output=/shared/corral/c1/engines-slurm-%j.log" in lines
    assert lines[-1] == f"exec srun --cpu-bind=none {ENGINE} --log-level WARNING"
    assert "export CORRAL_LAUNCHER=slurm" in lines


def test_pbs_script_is_a_job_array() -> None:
    script = job_script(PBS, spec(4, queue="batch", walltime="00:10:00", account="a1"))
    assert "#PBS -t 1-4" in script
    assert "#PBS -q batch" in script and "#PBS -A a1" in script
    assert "#PBS -l walltime=00:10:00" in script
    assert "#PBS -J 1-4" in job_script(PBS, spec(4, array_flag="-J"))
    assert "#PBS -t" not in job_script(PBS, spec(1))  # one engine: no array


def test_lsf_script_is_a_job_array_read_from_stdin(tmp_path: Path) -> None:
    script = job_script(LSF, spec(3, queue="short", account="p9", walltime="30"))
    assert '#BSUB -J "corral-c1[1-3]"' in script
    assert "#BSUB -q short" in script and "#BSUB -P p9" in script and "#BSUB -W 30" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    argv, stdin = LSF.submit(str(path), ["-G", "grp"])
    assert argv == ["bsub", "-G", "grp"] and stdin == script


def test_sge_script_is_an_array_job() -> None:
    script = job_script(SGE, spec(5, queue="all.q", walltime="1:00:00"))
    assert "#$ -t 1-5" in script and "#$ -q all.q" in script and "#$ -l h_rt=1:00:00" in script


def test_user_template_file_text() -> None:
    template = "#!/bin/bash\n{{directives}}\nmodule load python\nsrun {{engine_command}}\n"
    script = job_script(SLURM, spec(2), template)
    assert "module load python" in script and "#SBATCH --ntasks=2" in script


@pytest.mark.parametrize(
    ("system", "output", "job_id"),
    [
        (SLURM, "4242\n", "4242"),
        (SLURM, "4242;cluster2\n", "4242"),
        (PBS, "123.pbs-server\n", "123.pbs-server"),
        (PBS, "123[].pbs-server\n", "123[].pbs-server"),
        (LSF, "Job <77> is submitted to default queue <normal>.\n", "77"),
        (SGE, "991.1-4:1\n", "991"),
    ],
)
def test_job_ids_as_each_system_prints_them(system: BatchSystem, output: str, job_id: str) -> None:
    assert system.parse_job_id(output) == job_id


@pytest.mark.parametrize("system", [SLURM, PBS, LSF, SGE])
def test_a_submission_without_a_job_id_is_an_error(system: BatchSystem) -> None:
    with pytest.raises(LaunchError, match="no job id"):
        system.parse_job_id("sbatch: error: Batch job submission failed\n")


def test_states_and_their_meaning() -> None:
    assert SLURM.parse_state(0, "JobId=5 JobName=x JobState=RUNNING Reason=None") == "RUNNING"
    assert SLURM.parse_state(0, "JobId=5 JobState=TIMEOUT Reason=TimeLimit") == (
        "TIMEOUT (TimeLimit)"
    )
    assert SLURM.parse_state(1, "slurm_load_jobs error: Invalid job id specified") == GONE
    held = "JobId=5 JobState=PENDING Reason=JobHeldUser Dependency=(null)"
    assert SLURM.parse_state(0, held) == "PENDING"  # a bare state: it is tested for membership
    assert SLURM.parse_reason(held) == "JobHeldUser"
    assert SLURM.parse_reason("JobId=5 JobState=RUNNING Reason=None") == ""
    assert "COMPLETING" in SLURM.leaving_states and "RUNNING" in SLURM.active_states
    assert PBS.parse_state(0, "Job Id: 1.s\n    job_state = R\n") == "R"
    assert PBS.parse_state(153, "") == GONE
    assert LSF.parse_state(0, "DONE\nRUN\nPEND\n") == "RUN"
    assert LSF.parse_state(0, "DONE\nEXIT\n") == "DONE"
    assert LSF.parse_state(255, "") == GONE
    assert SGE.parse_state(0, "job_number: 12\n") in SGE.active_states
    assert SGE.parse_state(1, "") == GONE


def test_slurm_explains_a_cancel_in_its_own_words() -> None:
    log = "srun: forcing job termination\nslurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026 ***"
    assert SLURM.explain(log) == "JOB 7 ON n1 CANCELLED AT 2026"


def test_cancel_commands() -> None:
    assert SLURM.cancel("5") == ["scancel", "5"]
    assert PBS.cancel("5[].s") == ["qdel", "5[].s"]
    assert LSF.cancel("5") == ["bkill", "5"]
    assert SGE.cancel("5") == ["qdel", "5"]


def test_mpiexec_command() -> None:
    engine = spec(16).engine_command(mpi=True)
    argv = mpiexec_command("mpiexec", 16, ["-bind-to", "none"], engine)
    assert argv[:5] == ["mpiexec", "-bind-to", "none", "-n", "16"]
    assert argv[-1] == "--mpi"
    with pytest.raises(LaunchError):
        mpiexec_command("mpiexec", 0, [], engine)


def test_ssh_hosts_and_round_robin() -> None:
    assert assign_engines(parse_hosts("a:2,b"), 5) == ["a", "a", "b", "b", "b"]
    assert assign_engines(parse_hosts(["x", "y"]), 3) == ["x", "y", "x"]
    assert assign_engines(parse_hosts("me@h:1"), 2) == ["me@h", "me@h"]
    with pytest.raises(LaunchError, match="needs hosts"):
        parse_hosts("")
    with pytest.raises(LaunchError, match="engine count"):
        parse_hosts("a:many")


def test_ssh_hosts_as_ipyparallels_engines_dict_of_counts() -> None:
    """``{"host1": 2, "host2": 5}`` (ipyparallel's ``SSHEngineSetLauncher.engines``, or a TOML
    ``[ssh.hosts]`` table) gives each host its count; a dict used to be taken as its keys, the
    counts silently dropped (engines dealt round-robin instead)."""
    assert assign_engines(parse_hosts({"a": 1, "b": 2}), 3) == ["a", "b", "b"]
    assert assign_engines(parse_hosts({"me@h": "2"}), 2) == ["me@h", "me@h"]
    with pytest.raises(LaunchError, match="per-host engine arguments are not supported"):
        parse_hosts({"a": (1, ["--profile-dir=/elsewhere"])})


def test_ssh_remote_command_says_its_pid_then_becomes_the_engine() -> None:
    line = remote_engine_command(spec(1), "/tmp/c1/corral-engine.json", "python3")
    assert line.startswith("echo corral-engine-pid $$; CORRAL_LAUNCHER=ssh exec python3 -m")
    assert "--file /tmp/c1/corral-engine.json" in line


def test_unknown_launcher_lists_the_known_ones() -> None:
    with pytest.raises(LaunchError, match="local, mpi, ssh, slurm, pbs, lsf, sge"):
        engine_launcher("condor", spec())
    assert set(ENGINE_LAUNCHERS) == {"local", "mpi", "ssh", "slurm", "pbs", "lsf", "sge"}


@pytest.mark.parametrize("system", [SLURM, PBS, LSF, SGE], ids=lambda s: s.name)
def test_the_controllers_job_runs_the_controller_with_its_own_name_and_log(
    system: BatchSystem,
) -> None:
    controller = LaunchSpec(
        cluster_id="c1",
        cluster_path=Path("/shared/corral/c1"),
        engine_file=Path("/shared/corral/c1/corral-engine.json"),
        n=1,
        options={"walltime": "02:00:00"},
        role="controller",
        command=("/opt/py/bin/python", "-m", "corral", "controller", "--cluster-id", "c1"),
    )
    script = job_script(system, controller)
    assert "/opt/py/bin/python -m corral controller --cluster-id c1" in script
    assert "corral engine" not in script
    assert "corral-c1-controller" in script
    assert f"/shared/corral/c1/controller-{system.name}" in script  # its own log file
    assert "02:00:00" in script


def test_option_directives_spell_only_the_options_set_in_the_systems_order() -> None:
    spellings = {"queue": "-q {}", "account": "-A {}", "walltime": "-l walltime={}"}
    options = {"walltime": "01:00:00", "queue": "short", "account": "", "extra": "x"}
    assert option_directives(options, spellings) == ["-q short", "-l walltime=01:00:00"]
    assert option_directives({}, spellings) == []
