"""The engine's own options, for ``python -m corral.engine`` and ``corral engine``.

Kept out of the :mod:`corral.engine` package (importing it imports zmq and every engine part)
so that ``corral engine --help`` lists them at no cost to the command line's start-up:
``corral engine`` passes the options it does not know to the engine, which reads them with
this same list.
"""

from __future__ import annotations

import argparse

__all__ = ["add_engine_options", "engine_options_help"]


def add_engine_options(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the engine's options (beyond where its connection file is) to ``group``."""
    group.add_argument("--uuid", help="this engine's uuid (default: a fresh one)")
    group.add_argument("--id", type=int, help="ask the controller for this engine id")
    group.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for registration"
    )
    group.add_argument(
        "--owner-pid",
        type=int,
        default=None,
        help="exit when this parent (or ancestor) process is gone",
    )
    group.add_argument(
        "--max-result-bytes",
        type=int,
        default=None,
        help="answer an apply whose serialized result is larger with an error (default: none)",
    )
    group.add_argument(
        "--no-ipython",
        action="store_true",
        help="run plain Python even if IPython is installed (no %%magics, no display())",
    )
    group.add_argument(
        "--mpi",
        action="store_true",
        help="initialise MPI (mpi4py) before registering, so tasks share COMM_WORLD",
    )
    group.add_argument(
        "--batch-scheduling",
        action="store_true",
        help="run under SCHED_BATCH (Linux): a woken engine does not preempt the process "
        "running on its core (the local launcher's choice when engines outnumber the cores)",
    )
    group.add_argument(
        "--no-direct",
        action="store_true",
        help="take requests only through the controller's MUX, not straight from clients on "
        "this host (docs/wire-flows.md, 'Direct requests')",
    )
    group.add_argument(
        "--no-lanes",
        action="store_true",
        help="take direct requests on the zmq ROUTER only, not on a Unix socket lane "
        "(docs/wire-flows.md, 'Lanes')",
    )
    group.add_argument(
        "--work-dir", help="run in this folder (ipyparallel's IPEngine.work_dir); default: here"
    )
    group.add_argument(
        "--startup-command",
        help="Python run in the namespace before the first task (ipyparallel's "
        "IPEngine.startup_command), e.g. 'import numpy as np'",
    )
    group.add_argument(
        "--startup-script",
        help="a Python file run likewise, before --startup-command (IPEngine.startup_script)",
    )


def engine_options_help() -> str:
    """The engine's options as ``--help`` lists them, for ``corral engine --help``."""
    parser = argparse.ArgumentParser(prog="corral engine", add_help=False, usage=argparse.SUPPRESS)
    add_engine_options(parser.add_argument_group("engine options (passed on to the engine)"))
    return parser.format_help().strip()
