"""Launcher options from the command line and the per-cluster config file.

The config file is TOML, ``<cluster-dir>/<cluster-id>.toml`` (beside the cluster's folder, so
removing a stopped cluster's folder keeps it) or ``--config PATH``::

    [start]
    engines = "slurm"        # the engine launcher
    n = 64

    [slurm]
    partition = "debug"
    account = "physics"
    walltime = "02:00:00"
    extra = ["--mem-per-cpu=2G", "--constraint=haswell"]
    template = "~/corral-slurm.sh"

    [ssh]
    hosts = ["node1:8", "node2:8"]
    identity = "~/.ssh/cluster"

A flag given on the command line wins over the file. Each launcher reads only its own table.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import CorralError

CONTROLLER_LAUNCHERS = ("local", "mpi", "ssh", "slurm", "pbs", "lsf", "sge")  # batch: one job

# flag -> (option name, launchers it is meant for)
FLAG_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "partition": ("partition", ("slurm",)),
    "queue": ("queue", ("slurm", "pbs", "lsf", "sge")),
    "account": ("account", ("slurm", "pbs", "lsf", "sge")),
    "walltime": ("walltime", ("slurm", "pbs", "lsf", "sge")),
    "batch_line": ("extra", ("slurm", "pbs", "lsf", "sge")),
    "template": ("template", ("slurm", "pbs", "lsf", "sge")),
    "submit_arg": ("submit_args", ("slurm", "pbs", "lsf", "sge")),
    "mpiexec": ("mpiexec", ("mpi",)),
    "mpi_args": ("mpi_args", ("mpi",)),
    "ssh_hosts": ("hosts", ("ssh",)),
    "ssh_port": ("port", ("ssh",)),
    "ssh_key": ("identity", ("ssh",)),
    "remote_python": ("python", ("ssh",)),
    "remote_dir": ("remote_dir", ("ssh",)),
}


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """The launcher choice and every launcher option, as `corral start` flags."""
    group = parser.add_argument_group("launchers (see also the per-cluster config file)")
    group.add_argument(
        "--engines",
        dest="engine_launcher",
        default=None,
        metavar="LAUNCHER",
        help="how engines start: local (default), mpi, ssh, slurm, pbs, lsf, sge",
    )
    group.add_argument(
        "--controller",
        dest="controller_launcher",
        default=None,
        choices=CONTROLLER_LAUNCHERS,
        help="where the controller runs: local (default), mpi (one rank of its own mpiexec), "
        "ssh (on --host), or in a batch job of its own (slurm, pbs, lsf, sge; with the batch "
        "options below)",
    )
    group.add_argument("--host", default=None, help="the controller's host for --controller ssh")
    group.add_argument("--config", default=None, help="launcher config file (TOML)")
    group.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every engine (a batch job may wait in the queue longer)",
    )
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="with --daemon and a batch launcher: return once the job is submitted; its "
        "engines register when the scheduler runs it (`corral list` shows the job's state)",
    )
    group.add_argument("--partition", default=None, help="slurm partition")
    group.add_argument("--queue", default=None, help="batch queue (partition on slurm)")
    group.add_argument("--account", default=None, help="batch account / project")
    group.add_argument("--walltime", default=None, help="batch time limit, e.g. 01:00:00")
    group.add_argument(
        "--batch-line",
        action="append",
        default=None,
        help="extra directive for the job script (repeat it); e.g. --batch-line=--mem=2G",
    )
    group.add_argument("--template", default=None, help="job script template file")
    group.add_argument(
        "--submit-arg", action="append", default=None, help="extra word for sbatch/qsub/bsub"
    )
    group.add_argument("--mpiexec", default=None, help="mpiexec command (default mpiexec)")
    group.add_argument("--mpi-args", default=None, help="extra mpiexec arguments, one string")
    group.add_argument("--ssh-hosts", default=None, help="HOST[:COUNT],... for --engines ssh")
    group.add_argument("--ssh-port", type=int, default=None, help="ssh port")
    group.add_argument("--ssh-key", default=None, help="ssh identity (private key) file")
    group.add_argument("--remote-python", default=None, help="python on the ssh hosts")
    group.add_argument("--remote-dir", default=None, help="folder for files on the ssh hosts")


def load_config(path: Path, required: bool = False) -> dict[str, Any]:
    """The parsed config file; {} when it does not exist (CorralError if ``required``), a
    CorralError naming the file and line when it is not valid TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise CorralError(f"the launcher config file {path} does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as err:
        raise CorralError(f"{path} is not valid TOML: {err}") from None


def launcher_options(
    name: str, config: Mapping[str, Any], flags: Mapping[str, Any]
) -> dict[str, Any]:
    """Options for launcher ``name``: its table in ``config``, then the flags given for it."""
    table = config.get(name, {})
    if not isinstance(table, Mapping):
        raise CorralError(f"the config file's [{name}] must be a table of options")
    options = dict(table)
    for flag, (option, launchers) in FLAG_OPTIONS.items():
        value = flags.get(flag)
        if value is not None and name in launchers:
            options[option] = value
    return options


def resolve(args: argparse.Namespace, config_path: Path) -> tuple[str, int | None, dict[str, Any]]:
    """(engine launcher, engine count or None, its options) from flags and the config file."""
    config = load_config(Path(args.config) if args.config else config_path, bool(args.config))
    start = config.get("start", {})
    name = args.engine_launcher or start.get("engines") or "local"
    count = start.get("n")
    if name.isdigit():  # `--engines 4`, the old spelling of `-n 4`
        name, count = start.get("engines") or "local", int(name)
    return name, count, launcher_options(name, config, vars(args))


def controller_choice(args: argparse.Namespace, config_path: Path) -> tuple[str, dict[str, Any]]:
    """(controller launcher, its options) for `corral start`: see :func:`controller_settings`;
    ``--host`` names the ssh controller's host."""
    config = load_config(Path(args.config) if args.config else config_path, bool(args.config))
    name, options = controller_settings(config, args.controller_launcher, vars(args))
    if name in ("local", "ssh") and args.host:
        options["host"] = args.host
    return name, options


def controller_settings(
    config: Mapping[str, Any], name: str | None, flags: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(controller launcher, its options): ``name``, else the ``[controller]`` table's
    ``launcher``, else local; for ssh the ``[ssh]`` table's connection settings, for mpi or a
    batch job that launcher's table, then the ``[controller]`` table, then the flags."""
    table = config.get("controller", {})
    if not isinstance(table, Mapping):
        raise CorralError("the config file's [controller] must be a table of options")
    name = name or table.get("launcher") or "local"
    if name not in CONTROLLER_LAUNCHERS:
        raise CorralError(
            f"no controller launcher {name!r}; choose one of {', '.join(CONTROLLER_LAUNCHERS)}"
        )
    if name not in ("local", "ssh"):  # mpi, a batch job: its options, then [controller]
        options = launcher_options(name, config, flags)
        options.update({k: v for k, v in table.items() if k != "launcher"})
        return name, options
    options = {k: v for k, v in launcher_options("ssh", config, flags).items() if k != "hosts"}
    options.update({k: v for k, v in table.items() if k != "launcher"})
    return name, options


@dataclass(frozen=True)
class Profile:
    """What ``Cluster(profile=NAME)`` takes from ``<cluster-dir>/NAME.toml`` (the file `corral
    start --cluster-id NAME` reads), as ipyparallel's ``Cluster(profile=...)`` takes its
    profile's ``ipcluster_config.py``; the Cluster's own arguments win."""

    engines: str | None = None
    n: int | None = None
    launcher_options: dict[str, Any] = field(default_factory=dict)
    controller: str | None = None
    controller_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, engines: str | None, controller: str | None) -> Profile:
        """The profile file at ``path`` (empty when there is none) for the ``engines`` and
        ``controller`` launchers given (None: the file's choice)."""
        config = load_config(path)
        start = config.get("start", {})
        if not isinstance(start, Mapping):
            raise CorralError(f"{path}: [start] must be a table of options")
        engines = engines or start.get("engines") or "local"
        count = start.get("n")
        controller, controller_options = controller_settings(config, controller, {})
        return cls(
            engines=engines,
            n=int(count) if count is not None else None,
            launcher_options=launcher_options(engines, config, {}),
            controller=controller,
            controller_options=controller_options,
        )


def submitted_jobs(state: Mapping[str, Any]) -> list[str]:
    """``slurm job 12`` for each batch job a cluster's state file records as submitted."""
    return [
        f"{launch.get('launcher')} job {launch['job_id']}"
        for launch in state.get("launchers", [])
        if launch.get("job_id")
    ]


def launcher_argv(args: argparse.Namespace) -> list[str]:
    """The launcher flags of ``args`` as words again (for `corral start --daemon`)."""
    argv: list[str] = []
    if args.controller_launcher:
        argv += ["--controller", args.controller_launcher]
    if args.host:
        argv += ["--host", args.host]
    if args.engine_launcher:
        argv += ["--engines", args.engine_launcher]
    if args.config:
        argv += ["--config", args.config]
    argv.append(f"--start-timeout={args.start_timeout}")
    if args.no_wait:
        argv.append("--no-wait")
    for flag in FLAG_OPTIONS:
        value = getattr(args, flag, None)
        if value is None:
            continue
        spelled = "--" + flag.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            argv.append(f"{spelled}={item}")
    return argv
