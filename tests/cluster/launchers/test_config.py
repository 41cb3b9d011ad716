"""Launcher options: the per-cluster TOML file, the command line, and which wins."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from corral.cli import build_parser
from corral.cluster.launchers.config import (
    controller_choice,
    launcher_argv,
    launcher_options,
    load_config,
    resolve,
)
from corral.errors import CorralError

CONFIG = """
[start]
engines = "slurm"
n = 64

[slurm]
partition = "debug"
account = "physics"
extra = ["--mem=2G"]

[ssh]
hosts = ["a:2", "b"]
"""


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["start", *argv])


def test_the_config_file_chooses_the_launcher_and_its_options(tmp_path: Path) -> None:
    path = tmp_path / "c1.toml"
    path.write_text(CONFIG)
    name, n, options = resolve(parse(), path)
    assert (name, n) == ("slurm", 64)
    assert options == {"partition": "debug", "account": "physics", "extra": ["--mem=2G"]}


def test_flags_win_over_the_file_and_reach_only_their_launcher(tmp_path: Path) -> None:
    path = tmp_path / "c1.toml"
    path.write_text(CONFIG)
    args = parse("--partition", "gpu", "--walltime", "00:05:00", "--batch-line=--exclusive")
    name, _, options = resolve(args, path)
    assert name == "slurm"
    assert options["partition"] == "gpu" and options["walltime"] == "00:05:00"
    assert options["extra"] == ["--exclusive"]
    _, _, ssh = resolve(parse("--engines", "ssh", "--partition", "gpu"), path)
    assert ssh == {"hosts": ["a:2", "b"]}  # --partition is no ssh option


def test_no_file_means_local(tmp_path: Path) -> None:
    assert resolve(parse(), tmp_path / "none.toml") == ("local", None, {})


def test_old_spelling_engines_as_a_count(tmp_path: Path) -> None:
    assert resolve(parse("--engines", "3"), tmp_path / "none.toml")[:2] == ("local", 3)


def test_an_explicit_config_must_exist_and_parse(tmp_path: Path) -> None:
    with pytest.raises(CorralError, match="does not exist"):
        resolve(parse("--config", str(tmp_path / "missing.toml")), tmp_path / "x.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[slurm\npartition=")
    with pytest.raises(CorralError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(CorralError, match=r"\[slurm\] must be a table"):
        launcher_options("slurm", {"slurm": 3}, {})


def test_daemon_argv_round_trip(tmp_path: Path) -> None:
    args = parse("--engines", "slurm", "--partition", "p", "--batch-line=--mem=1G")
    again = parse(*launcher_argv(args))
    assert resolve(again, tmp_path / "x.toml") == resolve(args, tmp_path / "x.toml")


def test_controller_over_ssh_takes_the_ssh_connection_settings(tmp_path: Path) -> None:
    path = tmp_path / "c1.toml"
    path.write_text(
        '[ssh]\nhosts = ["n1"]\nport = 2222\nidentity = "~/.ssh/k"\n\n'
        '[controller]\nlauncher = "ssh"\nhost = "login1"\npython = "/opt/bin/python3"\n'
    )
    name, options = controller_choice(parse(), path)
    assert name == "ssh"
    assert options == {
        "port": 2222,
        "identity": "~/.ssh/k",
        "host": "login1",
        "python": "/opt/bin/python3",
    }
    assert controller_choice(parse("--host", "login2"), path)[1]["host"] == "login2"
    assert controller_choice(parse("--controller", "local"), path)[0] == "local"
    again = parse(*launcher_argv(parse("--controller", "ssh", "--host", "h")))
    assert (again.controller_launcher, again.host) == ("ssh", "h")


def test_a_batch_controller_takes_its_systems_options_then_the_controller_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c1.toml"
    path.write_text(CONFIG + '\n[controller]\nlauncher = "slurm"\nwalltime = "48:00:00"\n')
    name, options = controller_choice(parse("--account", "astro"), path)
    assert name == "slurm"
    assert options == {
        "partition": "debug",
        "account": "astro",
        "extra": ["--mem=2G"],
        "walltime": "48:00:00",
    }
    with pytest.raises(CorralError, match="choose one of local, mpi, ssh, slurm, pbs, lsf, sge"):
        controller_choice(parse(), _with_controller(tmp_path, "kubernetes"))


def _with_controller(tmp_path: Path, launcher: str) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(f'[controller]\nlauncher = "{launcher}"\n')
    return path
