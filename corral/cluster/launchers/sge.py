"""Sun/Son of/Univa Grid Engine: engines as the tasks of one array job (``-t 1-N``).

``qsub -terse`` prints the id (``123.1-4:1`` for an array: the job is ``123``); ``qstat -j``
exits non-zero once the job is gone; ``qdel`` cancels every task. Options: ``queue``,
``account`` (``-A``), ``walltime`` (``-l h_rt=``), ``extra``, ``template``, ``submit_args``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .batch import GONE, BatchSystem, leading_job_id, make_batch_launcher, option_directives

TEMPLATE = """#!/bin/sh
{{directives}}
export CORRAL_LAUNCHER=sge
exec {{engine_command}}
"""


SPELLINGS = {"queue": "-q {}", "account": "-A {}", "walltime": "-l h_rt={}"}


def directives(options: Mapping[str, Any], n: int, job_name: str, log_file: str) -> list[str]:
    lines = [f"-N {job_name}", "-S /bin/sh", "-cwd", "-j y", f"-o {log_file}", f"-t 1-{n}"]
    return lines + option_directives(options, SPELLINGS)


def submit(script: str, extra: Sequence[str]) -> tuple[list[str], str | None]:
    return ["qsub", "-terse", *extra, script], None


def parse_job_id(output: str) -> str:
    return leading_job_id(output, "qsub")


def status(job_id: str) -> list[str]:
    return ["qstat", "-j", job_id]


def parse_state(code: int, output: str) -> str:
    """``qstat -j`` knows the job (queued or running) or exits non-zero (gone)."""
    return "LISTED" if code == 0 and output.strip() else GONE


def cancel(job_id: str) -> list[str]:
    return ["qdel", job_id]


SGE = BatchSystem(
    name="sge",
    prefix="#$",
    template=TEMPLATE,
    directives=directives,
    submit=submit,
    parse_job_id=parse_job_id,
    status=status,
    parse_state=parse_state,
    cancel=cancel,
    active_states=frozenset({"LISTED"}),
)

SGELauncher = make_batch_launcher(SGE)
