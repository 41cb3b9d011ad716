"""The controller's hot path compiled to C by mypyc, used only while it matches its source.

Every load-balanced task passes through the Hub and the task scheduler, pure Python shells
whose per-message work (the loop, bundles, signatures, the Hub's records and store rows, the
scheduler's wire) is what their CPU per task is made of. ``make native`` (``tools/
build_native.py``) compiles the modules in :data:`COMPILED` with mypyc, from the same typed
source (mypy --strict is what mypyc needs), next to their ``.py`` files, and writes
:data:`STAMP_NAME`: each module's source digest. Nothing else changes: a tree without the
build, another Python, or ``CORRAL_NATIVE=0`` runs the ``.py`` files.

Compiled modules call each other's classes by their C layout, so they are used all or none:
:func:`install` (run when ``corral`` is imported) checks every stamped digest against the
source once per process; if one module was edited since the build (or its extension is
missing), every module of the list is imported from its ``.py`` file, so an edit always takes
effect, compiled again by the next ``make native``.

Written for the compiled form: a module constant read on a hot path is ``Final`` (compiled,
one that is not is looked up in its module's dict at every use, 10 to 20 ns, and an int one is
boxed), a type is tested with ``type(x) is T`` (``x.__class__`` is a generic attribute
lookup), and a list is appended to by name (a bound method kept in a variable is a generic
call); these read the other way round in the interpreter, which is not what runs.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

#: Modules compiled by ``make native``: the Hub's and the task scheduler's per-message path
#: (with the Hub's actions and activity log, its store's retention bookkeeping, writer thread,
#: rows, batches and per-write paths), the engine's per-task shell (task_shell, runner,
#: replies, io_shell, and what every task enters: the output capture, the interrupt gate, the
#: call's summary), the client's reply and I/O path,
#: its request making and resend copies (outgoing, recovery), the fingerprint by which a
#: function's pickle is reused (functioncache, byname), and what every process shares of it.
#: Each must compile under mypyc and behave as its source does (the whole suite runs on the
#: compiled build in CI). Not listed: the result stores, whose base class the memory and
#: MongoDB stores (and tests) subclass, which a compiled class does not allow (their helpers
#: are listed); for the same reason the Client's mixins (``link``, ``sending``) and the views
#: (``BroadcastView`` subclasses ``DirectView``, users subclass views); modules whose classes
#: are pickled (references' Reference, canning's Canned: a compiled class unpickles through
#: its __init__) or subclass the C pickler (serialize, unpickling: the process crashes); the
#: engine's namespace, which calls the user's code (its users' tracebacks and errors would
#: show compiled frames), and the streams that stand in for sys.stdout and sys.stderr (they
#: subclass a C type, io.TextIOBase); functiontemplates (its stand-in's class body is not
#: supported, and with the stand-in moved out it crashed).
COMPILED: Final = (
    "corral.loop",
    "corral.bundles",
    "corral.sockets",
    "corral.kept_frames",
    "corral.lane",
    "corral.protocol.session",
    "corral.protocol.usual",
    "corral.protocol.messages",
    "corral.protocol.functioncache",
    "corral.protocol.byname",
    "corral.controller.scheduler_shell",
    "corral.controller.scheduler_wire",
    "corral.controller.scheduling",
    "corral.controller.scheduling_placement",
    "corral.controller.scheduling_state",
    "corral.controller.dependencies",
    "corral.controller.task_queues",
    "corral.controller.free_engines",
    "corral.controller.packing",
    "corral.controller.hub_shell",
    "corral.controller.hub",
    "corral.controller.hub_records",
    "corral.controller.destination",
    "corral.controller.hub_actions",
    "corral.controller.activity",
    "corral.controller.store.writer",
    "corral.controller.store.retention",
    "corral.controller.store.sqlite_rows",
    "corral.controller.store.sqlite_batches",
    "corral.controller.store.sqlite_writes",
    "corral.client.socket_gate",
    "corral.client.gate_wire",
    "corral.client.lanes",
    "corral.client.records",
    "corral.client.forgotten_answers",
    "corral.client.reply_wire",
    "corral.client.entry_table",
    "corral.client.metadata_table",
    "corral.client.future_table",
    "corral.client.io_shell",
    "corral.client.completion",
    "corral.client.outcomes",
    "corral.client.dates",
    "corral.client.recovery",
    "corral.client.outgoing",
    "corral.engine.envelope",
    "corral.engine.reply_messages",
    "corral.engine.replies",
    "corral.engine.runner",
    "corral.engine.io_shell",
    "corral.engine.task_shell",
    "corral.engine.lanes",
    "corral.engine.capture",
    "corral.engine.interrupts",
    "corral.engine.summary",
)
#: The file, in the package's folder, of the built modules' source digests.
STAMP_NAME: Final = "_native_stamp.json"
#: The mypyc group: its shared library is ``corral/_native__mypyc*.so``.
GROUP_NAME: Final = "corral._native"
#: ``CORRAL_NATIVE=0`` imports every module from its source (profilers see their frames).
ENV_SWITCH: Final = "CORRAL_NATIVE"

PACKAGE_DIR: Final = Path(__file__).resolve().parent


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The ``.py`` file of ``module`` (one of :data:`COMPILED`) under ``package_dir``."""
    parts = module.split(".")[1:]
    return package_dir.joinpath(*parts[:-1], parts[-1] + ".py")


def extension_paths(module: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The compiled files of ``module`` this interpreter would import (its ABI's suffixes)."""
    source = source_path(module, package_dir)
    stem = source.with_suffix("")
    return [
        Path(str(stem) + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if Path(str(stem) + suffix).exists()
    ]


def digest(path: Path) -> str:
    """The digest a stamp records for a source file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_digests(
    modules: Sequence[str] = COMPILED, package_dir: Path = PACKAGE_DIR
) -> dict[str, str]:
    """Each module's source digest, as a stamp records it."""
    return {module: digest(source_path(module, package_dir)) for module in modules}


def write_stamp(
    modules: Sequence[str] = COMPILED,
    package_dir: Path = PACKAGE_DIR,
    digests: dict[str, str] | None = None,
) -> Path:
    """Record each built module's source digest (the build's last step): ``digests`` when
    given, read before the build began (a source edited during the build then no longer
    matches its stamp, so it runs from source until built again, never as stale C)."""
    stamp = source_digests(modules, package_dir) if digests is None else digests
    path = package_dir / STAMP_NAME
    path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return path


def why_pure(package_dir: Path = PACKAGE_DIR, environ: dict[str, str] | None = None) -> str:
    """Why the modules of :data:`COMPILED` are imported from source here, or ``""`` when the
    build can be used (stamp present, every digest equal, every extension there)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    stamp_file = package_dir / STAMP_NAME
    try:
        stamp = json.loads(stamp_file.read_text())
    except FileNotFoundError:
        return "not built (make native)"
    except (OSError, ValueError) as err:
        return f"unreadable {STAMP_NAME}: {err}"
    if not isinstance(stamp, dict) or sorted(stamp) != sorted(COMPILED):
        return "built for another list of modules (make native)"
    for module in COMPILED:
        try:
            fresh = digest(source_path(module, package_dir)) == stamp[module]
        except OSError as err:
            return f"{module}: {err}"
        if not fresh:
            return f"{module} edited since the build (make native)"
        if not extension_paths(module, package_dir):
            return f"{module} not built for this Python (make native)"
    for stray in built_files(package_dir):
        if (
            not stray.name.startswith("_native__mypyc")
            and module_name(stray, package_dir) not in _COMPILED_SET
        ):
            return f"{stray.name}: a module the build no longer lists (make native)"
    return ""


def built_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every extension module in the package's folders (all made by ``make native``)."""
    found = {
        path
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in package_dir.rglob("*" + suffix)
    }
    return sorted(found)


def module_name(extension: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """The module an extension file in the package would be imported as."""
    relative = extension.relative_to(package_dir)
    stem = relative.name.split(".", 1)[0]
    return ".".join(("corral", *relative.parent.parts, stem))


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Imports every module of the package from its ``.py`` file (the default path machinery
    would take an extension module next to it first: a listed one, or one a build left)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("corral."):
            return None
        source = source_path(fullname)
        if not source.is_file():  # a package (its __init__.py), or no such module
            return None
        return importlib.util.spec_from_file_location(fullname, source)


_COMPILED_SET: Final = frozenset(COMPILED)
#: Why this process runs the listed modules from source ("" when compiled), set by install.
state: str | None = None


def install() -> str:
    """Decide once per process whether the compiled modules are used; when not, put a finder
    first on ``sys.meta_path`` that imports them from source. Returns :func:`why_pure`."""
    global state
    if state is None:
        state = why_pure()
        if state and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFirst())
    return state


def describe() -> str:
    """One line for benchmarks and logs: compiled or from source, and why."""
    reason = install()
    return f"native: {len(COMPILED)} modules compiled" if not reason else f"native: off ({reason})"
