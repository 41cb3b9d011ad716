"""Engines as a batch job: a script rendered from a template, submitted, watched, cancelled.

The batch systems (Slurm, PBS, LSF, SGE) differ only in their directive lines and four commands
(submit, parse the job id, ask the state, cancel); each is a :class:`BatchSystem` of pure
functions, tested without the system. :class:`BatchLauncher` runs those commands.

A template is the job script with ``{{name}}`` holes (a syntax no shell uses, so ``$VAR`` and
``${VAR}`` in a user's template stay as they are). The holes: ``directives`` (the scheduler
lines made from the options), ``engine_command``, ``n``, ``job_name``, ``cluster_id``,
``cluster_path``, ``engine_file``, ``log_file``, ``python``. Options every batch launcher takes:
``queue`` (partition on Slurm), ``account``, ``walltime``, ``extra`` (more directive lines),
``template`` (a template file), ``submit_args`` (more words for the submit command).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from corral.errors import LaunchError

from .base import EngineLauncher, LaunchSpec, log_tail, require_tool, run_tool
from .mpi import option_list

HOLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
GONE = "GONE"  # the system no longer knows the job
LEAVE_TIMEOUT = 30.0  # seconds a cancelled job may stay listed (Slurm COMPLETING) before an error


def leading_job_id(output: str, tool: str) -> str:
    """The job id a submit command prints first (``123``, ``123;cluster``); LaunchError
    quoting ``tool``'s answer if it holds none."""
    match = re.match(r"\s*(\d+)", output)
    if match is None:
        raise LaunchError(f"{tool} answered {output.strip()!r}, which holds no job id")
    return match.group(1)


def option_directives(options: Mapping[str, Any], spellings: Mapping[str, str]) -> list[str]:
    """The lines of the usual options a user set (``queue``, ``account``, ``walltime``), in the
    order of ``spellings``, which maps each option to its line in one batch system's words (a
    format with one ``{}``): the options mean the same everywhere, only their spelling differs."""
    return [line.format(options[name]) for name, line in spellings.items() if options.get(name)]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill every ``{{name}}`` of ``template``; LaunchError naming an unknown hole."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise LaunchError(
                f"the job template has {{{{{name}}}}}, which is not one of: {', '.join(values)}"
            )
        return values[name]

    return HOLE.sub(fill, template)


@dataclass(frozen=True)
class BatchSystem:
    """One batch system's syntax and commands, as pure functions."""

    name: str
    prefix: str  # the directive marker: "#SBATCH", "#PBS", "#BSUB", "#$"
    template: str
    directives: Callable[[Mapping[str, Any], int, str, str], list[str]]
    submit: Callable[[str, Sequence[str]], tuple[list[str], str | None]]  # argv, stdin
    parse_job_id: Callable[[str], str]
    status: Callable[[str], list[str]]
    parse_state: Callable[[int, str], str]  # (exit status, stdout) -> state or GONE
    cancel: Callable[[str], list[str]]
    active_states: frozenset[str]  # engines may run (queued, running)
    leaving_states: frozenset[str] = frozenset()  # ended, but still listed (Slurm COMPLETING)
    extra_values: Callable[[Mapping[str, Any]], dict[str, str]] = lambda options: {}
    explain: Callable[[str], str] = lambda log_text: ""  # the job log's words on its end
    parse_reason: Callable[[str], str] = lambda output: ""  # why it waits (status output)

    def directive_lines(
        self, options: Mapping[str, Any], n: int, job_name: str, log_file: str
    ) -> str:
        """Scheduler lines from the options, then the user's ``extra`` lines (a bare option is
        given the marker)."""
        made = self.directives(options, n, job_name, log_file)
        lines = [f"{self.prefix} {line}" for line in made]
        for line in option_list_lines(options.get("extra")):
            lines.append(line if line.startswith("#") else f"{self.prefix} {line}")
        return "\n".join(lines)


def option_list_lines(value: Any) -> list[str]:
    """``extra`` lines: a list, or one string with a line each."""
    if value is None:
        return []
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    return [str(line) for line in value]


def job_script(
    system: BatchSystem, spec: LaunchSpec, template: str | None = None, job_name: str = ""
) -> str:
    """The job script that starts ``spec.n`` engines on ``system`` (pure: no I/O)."""
    suffix = "" if spec.role == "engines" else f"-{spec.role}"
    job_name = job_name or f"corral-{spec.cluster_id}{suffix}"
    log_file = str(spec.cluster_path / f"{spec.role}-{system.name}-%j.log")
    if system.name != "slurm":
        log_file = str(spec.cluster_path / f"{spec.role}-{system.name}.log")
    values = {
        "directives": system.directive_lines(spec.options, spec.n, job_name, log_file),
        "engine_command": shlex.join(spec.command or spec.engine_command()),
        "n": str(spec.n),
        "job_name": job_name,
        "cluster_id": spec.cluster_id,
        "cluster_path": shlex.quote(str(spec.cluster_path)),
        "engine_file": shlex.quote(str(spec.engine_file)),
        "log_file": shlex.quote(log_file),
        "python": shlex.quote(spec.python),
        "launcher": system.name,
        **system.extra_values(spec.options),
    }
    return render(template or system.template, values)


class BatchLauncher(EngineLauncher):
    """Submit the rendered job; ``failure`` asks the system about it; ``stop`` cancels it and
    waits until the system no longer lists it as queued or running."""

    system: ClassVar[BatchSystem]

    def __init__(self, spec: LaunchSpec) -> None:
        super().__init__(spec)
        self.job_id: str | None = None
        self.last_state = ""
        self.last_reason = ""  # the system's reason for the state, e.g. why it is pending

    @property
    def script_path(self) -> Path:
        return self.spec.cluster_path / f"{self.spec.role}-{self.name}.sh"

    def start(self) -> None:
        template_file = self.spec.option("template")
        template = None
        if template_file:
            try:
                template = Path(template_file).expanduser().read_text()
            except OSError as err:
                raise LaunchError(f"cannot read the job template {template_file}: {err}") from None
        script = job_script(self.system, self.spec, template)
        self.spec.cluster_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.script_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as handle:
            handle.write(script)
        argv, stdin = self.system.submit(
            str(self.script_path), option_list(self.spec.option("submit_args"))
        )
        require_tool(argv[0], self.name)
        # from the cluster folder: batch systems put default output files in the submit folder
        output = run_tool(argv, f"submitting the {self.name} job", stdin, self.spec.cluster_path)
        self.job_id = self.system.parse_job_id(output)

    def query_state(self) -> str:
        """The job's state as the system says it, or GONE."""
        assert self.job_id is not None
        argv = self.system.status(self.job_id)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"UNKNOWN ({err})"
        self.last_state = self.system.parse_state(done.returncode, done.stdout)
        self.last_reason = self.system.parse_reason(done.stdout) if done.returncode == 0 else ""
        return self.last_state

    def described_state(self) -> str:
        """The state asked of the system now, with its reason when it gives one and the state
        does not already carry it: ``PENDING (JobHeldUser)``."""
        state = self.query_state()
        if self.last_reason and f"({self.last_reason})" not in state:
            return f"{state} ({self.last_reason})"
        return state

    def failure(self) -> str | None:
        if self.job_id is None:
            return None
        state = self.query_state()
        if state in self.system.active_states or state.startswith("UNKNOWN"):
            return None
        if state in self.system.leaving_states:
            return None  # ending (its engines already told to stop): report its final state
        logs = "".join(
            log_tail(path, 2000)
            for path in self.spec.cluster_path.glob(f"{self.spec.role}-{self.name}*.log")
        )
        why = self.system.explain(logs) or logs
        return f"{self.name} job {self.job_id} is {state}" + (f": {why}" if why else "")

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel at once; then wait for the system to drop the job, at least LEAVE_TIMEOUT
        (``timeout`` is a grace period for processes; a job takes what its scheduler takes)."""
        if self.job_id is None:
            return
        timeout = max(timeout, LEAVE_TIMEOUT)
        deadline = time.monotonic() + timeout
        if self.query_state() != GONE:
            try:
                run_tool(self.system.cancel(self.job_id), f"cancelling {self.name} job")
            except LaunchError:
                pass  # already finished between the query and the cancel: checked below
        listed = self.system.active_states | self.system.leaving_states
        while self.query_state() in listed:
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{self.name} job {self.job_id} still {self.last_state} {timeout:.0f} s "
                    "after it was cancelled"
                )
            time.sleep(0.2)  # polling the scheduler: it has no event to wait on

    def state(self) -> dict[str, Any]:
        return {**super().state(), "job_id": self.job_id, "job_state": self.last_state}


def make_batch_launcher(system: BatchSystem) -> type[BatchLauncher]:
    """A BatchLauncher subclass for one system, named after it."""
    return type(
        f"{system.name.upper()}Launcher",
        (BatchLauncher,),
        {"name": system.name, "system": system, "__doc__": f"Engines as a {system.name} job."},
    )
