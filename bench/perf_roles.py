"""Linux ``perf`` call-graph samples of a cluster's processes, summed per role in CPU
microseconds per task: the inclusive cost of each compiled function and the self cost of each
leaf (``bench_cpu_roles.py --perf DIR``).

Why perf beside py-spy: the modules ``make native`` compiles are C, invisible to py-spy unless
it pauses each process to read native stacks (``--native``), which slows the cluster several
times over and samples idle threads too. perf samples the CPU clock of the running processes
from the kernel, without pausing them, and unwinds each sample's stack from a copy of its top
(``--call-graph dwarf``), so the compiled functions show by name (``CPyDef_<module>___<name>``)
with the proportions of a real run. Source (uncompiled) Python functions show only as the
interpreter's ``_PyEval_EvalFrameDefault``; the collector as ``gc_collect_main`` under whatever
allocation set it off (not a cost of that function).

perf is a tool, never a dependency (``apt-get install linux-perf``); the figures are per task
of the measured rounds: samples / frequency / tasks.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Samples per second per busy CPU: each sample copies STACK_BYTES of stack, so a 10 s run of
#: five busy processes is some 100 MB of perf.data at this rate.
FREQUENCY = 299
STACK_BYTES = 12288
#: Leaves and callers shown per role.
TOP = 40

_FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


@dataclass
class RoleSamples:
    """One role's samples: how many in all, per function anywhere on the stack (inclusive,
    counted once per sample), and per leaf (self)."""

    total: int = 0
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    leaves: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, frames: list[str]) -> None:
        self.total += 1
        if frames:
            self.leaves[frames[0]] += 1
        for name in set(frames):
            self.inclusive[name] += 1


class PerfRecording:
    """``perf record`` attached to ``pids`` until :meth:`stop` (SIGINT, as perf expects)."""

    def __init__(self, pids: Iterable[int], out: Path, frequency: int = FREQUENCY) -> None:
        perf = shutil.which("perf")
        if perf is None:
            raise SystemExit("perf is not installed (apt-get install linux-perf)")
        self.out = out
        self.frequency = frequency
        command = [perf, "record", "-q", "-e", "cpu-clock", "-F", str(frequency)]
        command += ["--call-graph", f"dwarf,{STACK_BYTES}", "-o", str(out)]
        command += ["-p", ",".join(str(pid) for pid in pids)]
        self._popen = subprocess.Popen(command, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self._popen.send_signal(signal.SIGINT)
        self._popen.wait(120)


def frame_name(line: str) -> str | None:
    """The function of one ``perf script`` stack line (``[unknown]`` named by its library)."""
    match = _FRAME.match(line)
    if match is None:
        return None
    name, library = match.group(1), match.group(2)
    if name == "[unknown]":
        return "?" + library.rsplit("/", 1)[-1]
    return _OFFSET.sub("", name)


def read_samples(lines: Iterable[str], role_of: Mapping[int, str]) -> dict[str, RoleSamples]:
    """Samples per role from ``perf script -F tid,ip,sym,dso`` output (a thread id line, its
    stack's lines innermost first, a blank line); threads not in ``role_of`` are skipped."""
    found: dict[str, RoleSamples] = collections.defaultdict(RoleSamples)
    tid: int | None = None
    frames: list[str] = []
    for line in [*lines, ""]:
        if not line.strip():
            if tid is not None and tid in role_of:
                found[role_of[tid]].add(frames)
            tid, frames = None, []
        elif tid is None:
            tid = int(line.split()[0])
        else:
            name = frame_name(line)
            if name is not None:
                frames.append(name)
    return found


def script_lines(data: Path) -> Iterator[str]:
    """``perf script``'s lines for ``data``, read as perf writes them."""
    command = ["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as popen:
        assert popen.stdout is not None
        yield from popen.stdout


def report(
    samples: Mapping[str, RoleSamples], frequency: int, tasks: int, top: int = TOP
) -> list[str]:
    """Per role: its sampled CPU us per task, then the compiled functions by inclusive us per
    task, then the leaves by self us per task."""
    per = 1e6 / frequency / tasks
    lines = []
    for role, found in sorted(samples.items(), key=lambda item: -item[1].total):
        lines.append(f"\n{role}: {found.total * per:.1f} us per task sampled (perf)")
        compiled = [
            (name, count)
            for name, count in found.inclusive.most_common()
            if name.startswith("CPyDef_")
        ][:top]
        lines.append("  compiled functions, inclusive us per task:")
        lines += [f"    {count * per:6.2f}  {name[6:]}" for name, count in compiled]
        lines.append("  leaves, self us per task:")
        leaves = found.leaves.most_common(top)
        lines += [f"    {count * per:6.2f}  {name}" for name, count in leaves]
    return lines


def thread_roles(by_role: Mapping[str, Iterable[int]]) -> dict[int, str]:
    """Every thread id of each role's processes (``/proc/<pid>/task``)."""
    found = {}
    for role, pids in by_role.items():
        for pid in pids:
            tasks = Path(f"/proc/{pid}/task")
            for entry in tasks.iterdir() if tasks.exists() else ():
                found[int(entry.name)] = role
    return found
