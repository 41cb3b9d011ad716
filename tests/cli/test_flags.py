"""The ``corral`` command's flags: where clusters are, and what ``corral start`` forwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli import main
from corral.cli.flags import build_parser, cluster_base, cluster_path, controller_args
from corral.controller.heartbeat import AWAIT_AT_LEAST
from corral.controller.packing import BURST_PACKING, MAX_BURST_PACKING
from corral.controller.scheduling import POLICIES, POLICY_ALIASES
from corral.controller.scheduling_state import LONG_TASK
from corral.protocol.shm import LONE_HUB_LINK_GRACE


def test_cluster_dir_flag_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parser = build_parser()
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "env"))
    args = parser.parse_args(["stop", "--cluster-id", "c1"])
    assert cluster_base(args) == tmp_path / "env"
    assert cluster_path(args) == tmp_path / "env" / "c1"
    args = parser.parse_args(["stop", "--cluster-dir", str(tmp_path / "flag")])
    assert cluster_path(args) == tmp_path / "flag" / "default"
    monkeypatch.delenv("CORRAL_DIR")
    assert cluster_base(parser.parse_args(["list"])) == Path.home() / ".corral"


def test_start_forwards_its_controller_flags_to_the_controller() -> None:
    """``corral start`` hands its controller flags on (to ``Cluster`` and to its own
    ``--daemon`` copy): each must parse as a ``corral controller`` flag with the same value."""
    parser = build_parser()
    given = [
        "start", "--ip", "0.0.0.0", "--heartbeat-period", "0.5", "--max-misses", "4",
        "--scheduler", "lru", "--max-outstanding", "3", "--burst-prefetch", "2", "--restore",
        "--burst-packing", "0", "--long-task", "0.5",
        "--curve",
        "--store-buffer-limit", "1M", "--store-size-limit", "1G", "--result-ttl", "1d",
        "--shm-threshold", "0", "--location", "example.org", "--lone-hub-link-grace", "2.5",
        "--reregistration-grace", "3",
    ]  # fmt: skip
    start = parser.parse_args(given)
    controller = parser.parse_args(["controller", *controller_args(start)])
    for name in (
        "ip", "heartbeat_period", "max_misses", "scheduler", "max_outstanding",
        "burst_prefetch", "burst_packing", "long_task", "restore",
        "curve", "store_buffer_limit", "store_size_limit", "result_ttl", "shm_threshold",
        "location", "insecure", "no_curve", "lone_hub_link_grace",
        "reregistration_grace",
    ):  # fmt: skip
        assert getattr(controller, name) == getattr(start, name), name


def test_the_scheduler_flag_takes_ipyparallels_scheme_names() -> None:
    """``--scheme`` (ipyparallel's ``ipcontroller --scheme=lru``) is ``--scheduler``; its
    choices are the scheduler's policies and their ipyparallel aliases."""
    parser = build_parser()
    assert parser.parse_args(["controller", "--scheme=twobin"]).scheduler == "twobin"
    assert parser.parse_args(["start", "--scheme", "plainrandom"]).scheduler == "plainrandom"
    for policy in (*POLICIES, *POLICY_ALIASES):
        assert parser.parse_args(["controller", "--scheduler", policy]).scheduler == policy
    with pytest.raises(SystemExit):
        parser.parse_args(["controller", "--scheme", "pure"])


def test_unknown_flags_are_refused_except_for_the_engine(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["list", "--cluster-dir", str(tmp_path), "--no-such-flag"])
    assert info.value.code == 2
    _, extra = build_parser().parse_known_args(["engine", "--id", "3"])
    assert extra == ["--id", "3"]


@pytest.mark.parametrize("command", ["controller", "start"])
def test_long_task_takes_seconds_from_zero(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert parser.parse_args([command, "--long-task", "0"]).long_task == 0
    assert parser.parse_args([command, "--long-task", "2.5"]).long_task == 2.5
    assert parser.parse_args([command]).long_task == LONG_TASK
    for value in ("-1", "3601", "nan", "soon"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, "--long-task", value])
        assert info.value.code == 2
        assert "is not a number of seconds from 0 (off) to 3600" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["controller", "start"])
def test_burst_packing_takes_a_whole_number_from_zero(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert parser.parse_args([command, "--burst-packing", "0"]).burst_packing == 0
    assert parser.parse_args([command]).burst_packing == BURST_PACKING
    for value in ("-1", str(MAX_BURST_PACKING + 1), "two"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, "--burst-packing", value])
        assert info.value.code == 2
        assert "is not a burst packing from 0 (never)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["controller", "start"])
@pytest.mark.parametrize(
    ("flag", "default"),
    [("--lone-hub-link-grace", LONE_HUB_LINK_GRACE), ("--reregistration-grace", AWAIT_AT_LEAST)],
)
def test_the_graces_take_seconds_from_zero(
    command: str, flag: str, default: float, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    name = flag.removeprefix("--").replace("-", "_")
    assert getattr(parser.parse_args([command, flag, "0.5"]), name) == 0.5
    assert getattr(parser.parse_args([command]), name) == default
    for value in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, flag, value])
        assert info.value.code == 2
        assert "is not a number of seconds, 0 or more" in capsys.readouterr().err


def test_engine_help_lists_the_options_passed_on_to_the_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``corral engine --help`` lists the engine's own options (``--work-dir``,
    ``--no-direct`` ...), which it passes on; before it listed only its own few."""
    with pytest.raises(SystemExit):
        main(["engine", "--help"])
    out = capsys.readouterr().out
    assert "engine options (passed on to the engine)" in out
    for flag in ("--work-dir", "--startup-script", "--no-direct", "--no-lanes", "--mpi", "--id"):
        assert flag in out, flag
    args, extra = build_parser().parse_known_args(["engine", "--work-dir", "/tmp", "--id", "3"])
    assert extra == ["--work-dir", "/tmp", "--id", "3"]  # still the engine's to read
