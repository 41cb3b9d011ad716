"""LSF: engines as the elements of one job array, ``bsub < script`` (LSF reads the ``#BSUB``
lines only from standard input). ``bkill`` on the array id cancels every element. Options:
``queue``, ``account`` (``-P`` project), ``walltime`` (``-W``, [HH:]MM), ``extra``,
``template``, ``submit_args``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import LaunchError

from .batch import GONE, BatchSystem, make_batch_launcher, option_directives

TEMPLATE = """#!/bin/sh
{{directives}}
export CORRAL_LAUNCHER=lsf
exec {{engine_command}}
"""


SPELLINGS = {"queue": "-q {}", "account": "-P {}", "walltime": "-W {}"}


def directives(options: Mapping[str, Any], n: int, job_name: str, log_file: str) -> list[str]:
    lines = [f'-J "{job_name}[1-{n}]"', f"-o {log_file}"]
    return lines + option_directives(options, SPELLINGS)


def submit(script: str, extra: Sequence[str]) -> tuple[list[str], str | None]:
    return ["bsub", *extra], Path(script).read_text()


def parse_job_id(output: str) -> str:
    """``Job <123> is submitted to queue <normal>.``"""
    match = re.search(r"Job <(\d+)>", output)
    if match is None:
        raise LaunchError(f"bsub answered {output.strip()!r}, which holds no job id")
    return match.group(1)


def status(job_id: str) -> list[str]:
    return ["bjobs", "-noheader", "-o", "stat", job_id]


def parse_state(code: int, output: str) -> str:
    """The most alive state of the array's elements (RUN before PEND before the rest)."""
    states = set(output.split())
    if code != 0 or not states or "found" in states:
        return GONE
    for state in ("RUN", "PEND", "PSUSP", "USUSP", "SSUSP"):
        if state in states:
            return state
    return sorted(states)[0]


def cancel(job_id: str) -> list[str]:
    return ["bkill", job_id]


LSF = BatchSystem(
    name="lsf",
    prefix="#BSUB",
    template=TEMPLATE,
    directives=directives,
    submit=submit,
    parse_job_id=parse_job_id,
    status=status,
    parse_state=parse_state,
    cancel=cancel,
    active_states=frozenset({"RUN", "PEND", "PSUSP", "USUSP", "SSUSP", "WAIT", "PROV"}),
)

LSFLauncher = make_batch_launcher(LSF)
