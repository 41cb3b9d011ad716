"""Slurm: one job whose single ``srun`` step runs every engine as one task.

``corral stop`` (or losing the job to scancel or the walltime) ends the step; Slurm sends the
engines SIGTERM first, on which they unregister, so the Hub forgets them at once. Options:
``queue`` or ``partition``, ``account``, ``walltime`` (``--time``), ``extra``, ``template``,
``submit_args``, ``srun_args``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from .batch import GONE, BatchSystem, leading_job_id, make_batch_launcher, option_directives
from .mpi import option_list

TEMPLATE = """#!/bin/sh
{{directives}}
export CORRAL_LAUNCHER=slurm
exec srun {{srun_args}} {{engine_command}}
"""


SPELLINGS = {"account": "--account={}", "walltime": "--time={}"}
"""The queue is Slurm's partition: ``partition`` or ``queue``, spelt in :func:`directives`."""


def directives(options: Mapping[str, Any], n: int, job_name: str, log_file: str) -> list[str]:
    lines = [f"--job-name={job_name}", f"--ntasks={n}", f"--output={log_file}"]
    partition = options.get("partition") or options.get("queue")
    if partition:
        lines.append(f"--partition={partition}")
    return lines + option_directives(options, SPELLINGS)


def submit(script: str, extra: Sequence[str]) -> tuple[list[str], str | None]:
    return ["sbatch", "--parsable", *extra, script], None


def parse_job_id(output: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    return leading_job_id(output, "sbatch")


def status(job_id: str) -> list[str]:
    return ["scontrol", "--oneliner", "show", "job", job_id]


def parse_state(code: int, output: str) -> str:
    """``JobState=RUNNING`` from scontrol; a job Slurm has forgotten is GONE."""
    match = re.search(r"\bJobState=(\S+)", output)
    if code != 0 or match is None:
        return GONE
    state = match.group(1)
    reason = parse_reason(output)
    if reason and state not in LISTED:
        return f"{state} ({reason})"
    return state


def parse_reason(output: str) -> str:
    """``Reason=JobHeldUser`` from scontrol: why a job waits or ended (none: "")."""
    reason = re.search(r"\bReason=(\S+)", output)
    if reason is None or reason.group(1) in ("None", "(null)"):
        return ""
    return reason.group(1)


def cancel(job_id: str) -> list[str]:
    return ["scancel", job_id]


def explain(log_text: str) -> str:
    """Slurm's own ``*** JOB 12 ON node CANCELLED AT ... DUE TO TIME LIMIT ***`` line."""
    found = re.findall(r"\*\*\* (JOB \d+ .*?) \*\*\*", log_text)
    return found[-1] if found else ""


def extra_values(options: Mapping[str, Any]) -> dict[str, str]:
    return {"srun_args": shlex.join(option_list(options.get("srun_args")))}


ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"})
LISTED = ACTIVE | {"COMPLETING"}

SLURM = BatchSystem(
    name="slurm",
    prefix="#SBATCH",
    template=TEMPLATE,
    directives=directives,
    submit=submit,
    parse_job_id=parse_job_id,
    status=status,
    parse_state=parse_state,
    cancel=cancel,
    active_states=ACTIVE,
    leaving_states=frozenset({"COMPLETING"}),
    extra_values=extra_values,
    explain=explain,
    parse_reason=parse_reason,
)

SlurmLauncher = make_batch_launcher(SLURM)
