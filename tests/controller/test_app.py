"""The controller process (corral/controller/app.py) as a whole: how it stops."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from corral.controller.app import Controller, ControllerConfig
from corral.controller.packing import BURST_PACKING
from corral.controller.scheduling_state import BURST_PREFETCH, MAX_BURST_PREFETCH
from tests.polling import until

HEARTBEAT = 60.0  # a long period: an exit that waits for the next beat would take this long


def written_by(path: Path, pid: int) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("controller_pid") == pid)
    except (OSError, ValueError):
        return False


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A controller process (with its scheduler) that has written its connection files;
    killed, with its children, when the test ends."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral",
            "controller",
            "--cluster-dir",
            str(tmp_path),
            "--cluster-id",
            "sigterm",
            "--heartbeat-period",
            str(HEARTBEAT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        engine_file = tmp_path / "sigterm" / "corral-engine.json"
        until(lambda: written_by(engine_file, process.pid), 30, "the connection files")
        children = psutil.Process(process.pid).children()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for child in children:
            if child.is_running():
                child.kill()


def test_sigterm_stops_the_controller_and_its_scheduler_at_once_not_at_the_next_beat(
    controller: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    (scheduler,) = psutil.Process(controller.pid).children()
    started = time.monotonic()
    controller.send_signal(signal.SIGTERM)
    returncode = controller.wait(HEARTBEAT / 2)
    took = time.monotonic() - started
    assert returncode == 0
    # the signal wakes the loop: a clean stop (scheduler, store, sockets) takes well under a
    # second on an idle machine; the bound leaves room for a loaded one, far below the period
    assert took < 3, f"the controller took {took:.1f} s to act on SIGTERM"
    assert not scheduler.is_running(), "the controller returned before its scheduler ended"
    assert not (tmp_path / "sigterm" / "corral-engine.json").exists()  # a clean stop
    stats = json.loads((tmp_path / "sigterm" / "controller-stats.json").read_text())
    assert stats["scheduler"] is not None  # the scheduler's last line: it stopped cleanly


def test_the_scheduler_ends_when_its_controller_is_killed(
    controller: subprocess.Popen[bytes],
) -> None:
    (scheduler,) = psutil.Process(controller.pid).children()
    assert "corral.controller.scheduler" in " ".join(scheduler.cmdline())
    controller.kill()
    controller.wait()
    scheduler.wait(15)  # psutil.TimeoutExpired if it outlives its controller


def test_a_dead_scheduler_stops_its_controller_at_once_with_a_fault_status(
    controller: subprocess.Popen[bytes],
) -> None:
    """The Hub watches its scheduler's stdout pipe: its end is seen at once, not polled, and
    the controller exits 1 so that a supervisor restarts it."""
    (scheduler,) = psutil.Process(controller.pid).children()
    started = time.monotonic()
    scheduler.kill()
    returncode = controller.wait(HEARTBEAT / 2)
    took = time.monotonic() - started
    assert returncode == 1
    assert took < 3, f"the controller took {took:.1f} s to see its scheduler die"


def unix_paths(pid: int) -> set[str]:
    return {
        str(connection.laddr)
        for connection in psutil.Process(pid).net_connections(kind="unix")
        if connection.laddr
    }


def test_the_scheduler_copies_come_over_a_socket_no_one_else_can_reach_or_find(
    controller: subprocess.Popen[bytes],
) -> None:
    """The Hub does not check the signatures of the scheduler's copies (the scheduler did), so
    no other process may be able to write to the socket they come on: a Unix socket (never a
    TCP port) whose file and folder are gone once the scheduler is connected, so nothing is
    left behind either, even by a controller killed later."""
    (path,) = {Path(name) for name in unix_paths(controller.pid) if name.endswith("/monitor")}
    assert path.parent.name.startswith("corral-monitor-")
    assert not path.parent.exists()
    controller.kill()
    controller.wait()
    assert not path.parent.exists()


def test_the_scheduler_is_given_the_controllers_prefetch_settings(tmp_path: Path) -> None:
    config = ControllerConfig(
        cluster_path=tmp_path, key=b"test-key", max_outstanding=3, burst_prefetch=2, burst_packing=0
    )
    controller = Controller(config)
    try:
        settings = controller.scheduler_settings("tcp://127.0.0.1:1", "ipc:///nowhere")
    finally:
        controller.loop.close()
        controller.context.term()
    assert (settings["max_outstanding"], settings["burst_prefetch"]) == (3, 2)
    assert settings["burst_packing"] == 0
    # the defaults are the scheduler's own
    assert ControllerConfig(cluster_path=tmp_path).burst_prefetch == BURST_PREFETCH
    assert ControllerConfig(cluster_path=tmp_path).burst_packing == BURST_PACKING


def test_the_socket_is_made_in_a_folder_only_its_user_can_enter(tmp_path: Path) -> None:
    controller = Controller(ControllerConfig(cluster_path=tmp_path, key=b"test-key"))
    try:
        controller.monitor, address = controller._bind_monitor()
        assert controller.trusted_copies
        path = Path(address.removeprefix("ipc://"))
        folder = path.parent.stat()
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        assert stat.S_ISSOCK(path.stat().st_mode)
        controller._seal_monitor()  # no scheduler to wait for: removed at once
        assert not path.parent.exists()
    finally:
        controller.loop.close()
        for sock in controller._sockets:
            sock.close(linger=0)
        controller.context.term()


def thread_nices(pid: int) -> dict[int, int]:
    """Each thread of process ``pid`` and its nice value."""
    return {
        int(task): os.getpriority(os.PRIO_PROCESS, int(task))
        for task in os.listdir(f"/proc/{pid}/task")
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_hubs_loop_and_store_writer_run_below_the_threads_that_carry_tasks(
    controller: subprocess.Popen[bytes],
) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = min(19, own + 10)

    def lowered_threads() -> int:
        return list(thread_nices(controller.pid).values()).count(lowered)

    # the Hub's loop (the main thread) and the SQLite store's writer; the MUX, control and
    # iopub devices, libzmq's threads and the scheduler process keep the priority they had
    until(lambda: lowered_threads() >= 2, 30, "the Hub's two threads lowered")
    nices = thread_nices(controller.pid)
    assert nices[controller.pid] == lowered, nices
    assert list(nices.values()).count(lowered) == 2, nices
    assert sum(1 for value in nices.values() if value == own) >= 5, nices
    (scheduler,) = psutil.Process(controller.pid).children()
    assert set(thread_nices(scheduler.pid).values()) == {own}


def test_a_nice_out_of_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for value in ("20", "-1", "ten"):
        done = subprocess.run(
            [sys.executable, "-m", "corral", "controller", "--cluster-dir", str(tmp_path)]
            + ["--hub-nice", value],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "nice steps from 0 to 19" in done.stderr
    assert not any(tmp_path.iterdir())  # no cluster folder made


def test_a_burst_prefetch_out_of_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for command in ("controller", "start"):
        for value in ("0", str(MAX_BURST_PREFETCH + 1), "four"):
            done = subprocess.run(
                [sys.executable, "-m", "corral", command, "--cluster-dir", str(tmp_path)]
                + ["--burst-prefetch", value],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            expected = (
                "is not a burst prefetch from 1 (never more than --max-outstanding) to "
                f"{MAX_BURST_PREFETCH}"
            )
            assert expected in done.stderr
    assert not any(tmp_path.iterdir())  # no cluster folder made


@pytest.mark.timeout(120)
def test_the_wildcard_star_listens_everywhere_as_ipyparallels_ip_star_does(
    tmp_path: Path,
) -> None:
    """``corral controller --ip '*'`` (ipyparallel's ``ipcontroller --ip="*"``) is 0.0.0.0:
    before, the scheduler process tried to connect to ``tcp://*:port`` and the controller
    failed to start."""
    from corral.client.client import Client

    assert ControllerConfig(tmp_path, ip="*").ip == "0.0.0.0"
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "star"]
    controller = subprocess.Popen(
        [sys.executable, "-m", "corral", "controller", "--ip", "*", "--location", "127.0.0.1"]
        + where
        + ["--log-file", str(tmp_path / "controller.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine: subprocess.Popen[bytes] | None = None
    try:
        folder = tmp_path / "star"

        def files_written() -> bool:
            assert controller.poll() is None, (tmp_path / "controller.log").read_text()[-2000:]
            return written_by(folder / "corral-engine.json", controller.pid)

        until(files_written, 30, "the connection files")
        info = json.loads((folder / "corral-client.json").read_text())
        assert info["ip"] == "127.0.0.1" and "curve" in info  # beyond loopback: CurveZMQ
        engine = subprocess.Popen(
            [sys.executable, "-m", "corral", "engine"]
            + ["--file", str(folder / "corral-engine.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(1, timeout=60)
            assert rc[:].apply_sync(os.getpid) == [engine.pid]
    finally:
        for process in (engine, controller):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
