"""PBS (Torque and OpenPBS / PBS Pro): engines as the tasks of one job array.

One engine per array task needs no MPI on the cluster. Torque spells the array ``-t 1-N``, PBS
Pro and OpenPBS ``-J 1-N`` (option ``array_flag``, default ``-t``); qsub prints the job id
(``123.server`` or ``123[].server``), qdel cancels the whole array. Options: ``queue``,
``account``, ``walltime``, ``extra``, ``template``, ``submit_args``, ``array_flag``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.errors import LaunchError

from .batch import GONE, BatchSystem, make_batch_launcher, option_directives

TEMPLATE = """#!/bin/sh
{{directives}}
export CORRAL_LAUNCHER=pbs
exec {{engine_command}}
"""


SPELLINGS = {"queue": "-q {}", "account": "-A {}", "walltime": "-l walltime={}"}


def directives(options: Mapping[str, Any], n: int, job_name: str, log_file: str) -> list[str]:
    lines = [f"-N {job_name}", "-j oe", f"-o {log_file}"]
    if n > 1:
        lines.append(f"{options.get('array_flag') or '-t'} 1-{n}")
    return lines + option_directives(options, SPELLINGS)


def submit(script: str, extra: Sequence[str]) -> tuple[list[str], str | None]:
    return ["qsub", *extra, script], None


def parse_job_id(output: str) -> str:
    """The first line qsub prints, as it prints it (``123.server``, ``123[].server``)."""
    job_id = output.strip().splitlines()[0].strip() if output.strip() else ""
    if not re.match(r"\d+", job_id):
        raise LaunchError(f"qsub answered {output.strip()!r}, which holds no job id")
    return job_id


def status(job_id: str) -> list[str]:
    return ["qstat", "-f", job_id]


def parse_state(code: int, output: str) -> str:
    """``job_state = R`` from ``qstat -f``; an unknown job is GONE."""
    match = re.search(r"job_state\s*=\s*(\w+)", output)
    if code != 0 or match is None:
        return GONE
    return match.group(1)


def cancel(job_id: str) -> list[str]:
    return ["qdel", job_id]


PBS = BatchSystem(
    name="pbs",
    prefix="#PBS",
    template=TEMPLATE,
    directives=directives,
    submit=submit,
    parse_job_id=parse_job_id,
    status=status,
    parse_state=parse_state,
    cancel=cancel,
    active_states=frozenset({"Q", "R", "H", "W", "T", "S", "B"}),
    leaving_states=frozenset({"E"}),
)

PBSLauncher = make_batch_launcher(PBS)
