"""What a user sees at a real terminal (a pseudo-terminal driven by pexpect): the progress bar
redraws in place and ends at 100%, `corral start` shows one while engines register, and Ctrl-C
during %%px in IPython aborts the engines' work and leaves the cluster usable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

PYTHON = sys.executable
PROMPT = r"In \[\d+\]: "


def render(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw`` output: ``\\r`` returns to the line start and
    later text overwrites earlier text, as on a real screen."""
    lines = [""]
    column = 0
    for char in raw.replace("\r\n", "\n"):
        if char == "\n":
            lines.append("")
            column = 0
        elif char == "\r":
            column = 0
        else:
            line = lines[-1]
            lines[-1] = line[:column] + char + line[column + 1 :]
            column += 1
    return [line.rstrip() for line in lines if line.strip()]


@pytest.fixture
def spawned() -> Iterator[list[Any]]:
    """pexpect children, all closed (and killed if need be) when the test ends."""
    children: list[Any] = []
    yield children
    for child in children:
        if child.isalive():
            child.terminate(force=True)
        child.close(force=True)


def spawn(
    children: list[Any], args: list[str], env: dict[str, str], cwd: Path, echo: bool = True
) -> Any:
    child = pexpect.spawn(
        args[0],
        args[1:],
        env=env,
        cwd=str(cwd),
        encoding="utf-8",
        dimensions=(40, 120),
        timeout=60,
        echo=echo,
        # Ctrl-C must raise KeyboardInterrupt in the child even when this run was started in
        # the background, whose children inherit SIGINT ignored (then Python installs no
        # handler for it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children.append(child)
    return child


def test_progress_bar_redraws_in_place_and_ends_at_100(  # type: ignore[no-untyped-def]
    cluster, tmp_path: Path, spawned
) -> None:
    script = tmp_path / "bar.py"
    script.write_text(
        "import sys, time\n"
        "import corral\n"
        "rc = corral.Client(connection_file=sys.argv[1])\n"
        "ar = rc.load_balanced_view().map_async(time.sleep, [0.05] * 40)\n"
        "ar.wait_interactive(interval=0.05)\n"
        "print('finished', ar.ready())\n"
        "rc.close()\n"
    )
    env = dict(os.environ)
    child = spawn(
        spawned, [PYTHON, str(script), str(cluster.path / "corral-client.json")], env, tmp_path
    )
    child.expect(pexpect.EOF)
    raw = child.before
    child.close()
    assert child.exitstatus == 0, raw
    frames = [frame for frame in raw.split("\r") if "%|" in frame]
    assert len(frames) >= 3, raw  # drawn several times...
    bar = raw[raw.index(frames[0]) : raw.index("finished")]
    assert bar.count("\n") == 1, raw  # ...on one line, each frame over the last
    screen = render(raw)
    assert len(screen) == 2, screen
    assert re.match(
        r"sleep: 100%\|█+\| 40/40 \[\d\d:\d\d<00:00, +[\d.]+(tasks/s|s/tasks)\]$", screen[0]
    ), screen
    assert screen[1] == "finished True"


def test_ctrl_c_stops_the_bar_not_the_work(cluster, tmp_path: Path, spawned) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "interrupt.py"
    # the tasks wait for a file the script writes once interrupted: none can end before the
    # Ctrl-C however slow the machine, and all end after it
    script.write_text(
        "import sys\n"
        "import corral\n"
        "def hold(flag):\n"
        "    import os, time\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(flag) and time.monotonic() < deadline:\n"
        "        time.sleep(0.02)\n"
        "    return flag\n"
        "rc = corral.Client(connection_file=sys.argv[1])\n"
        "ar = rc.load_balanced_view().map_async(hold, [sys.argv[2]] * 4)\n"
        "try:\n"
        "    ar.wait_interactive()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted with', ar.progress, 'done')\n"
        "    open(sys.argv[2], 'w').close()\n"
        "print('then', len(ar.get(timeout=60)), 'results')\n"
        "rc.close()\n"
    )
    flag = tmp_path / "go"
    args = [PYTHON, str(script), str(cluster.path / "corral-client.json"), str(flag)]
    # no echo of what is typed: the echoed "^C" lands wherever a redraw left the cursor (over
    # the bar's line, seen under load), which is the terminal's doing, not the program's
    child = spawn(spawned, args, dict(os.environ), tmp_path, echo=False)
    child.expect(r"hold:   0%\|[^\r\n]*\]")  # the whole first draw: the bar is made
    drawn = child.before + child.after
    child.sendintr()
    child.expect(pexpect.EOF)
    # the whole screen: whether the bar is drawn again before the Ctrl-C lands is timing
    screen = render(drawn + child.before)
    assert re.match(r"hold: +0%\|", screen[0]), screen
    assert screen[1] == "interrupted with 0 done", screen
    assert screen[2] == "then 4 results"  # the tasks went on


def test_corral_start_shows_engines_registering(tmp_path: Path, spawned) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, CORRAL_DIR=str(tmp_path / "clusters"))
    corral = [PYTHON, "-m", "corral"]
    child = spawn(spawned, [*corral, "start", "-n", "2", "--cluster-id", "bar"], env, tmp_path)
    child.expect("Ctrl-C stops them")
    screen = render(child.before)
    assert re.match(r"engines: 100%\|█+\| 2/2 \[", screen[0]), screen
    assert screen[1].startswith("cluster bar: controller and 2 engines running")
    child.sendintr()
    child.expect("cluster bar stopped")
    child.expect(pexpect.EOF)


def test_corral_start_daemon_waits_for_registration(tmp_path: Path, spawned) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, CORRAL_DIR=str(tmp_path / "clusters"))
    corral = [PYTHON, "-m", "corral"]
    try:
        child = spawn(
            spawned, [*corral, "start", "-n", "2", "--cluster-id", "bg", "--daemon"], env, tmp_path
        )
        child.expect(pexpect.EOF)
        screen = render(child.before)
        assert re.match(r"engines: 100%\|█+\| 2/2 \[", screen[0]), screen
        assert screen[1].startswith("cluster bg running in the background with 2 engines")
    finally:
        stop = subprocess.run(
            [*corral, "stop", "--cluster-id", "bg"], env=env, capture_output=True, timeout=60
        )
    assert stop.returncode == 0, stop


@pytest.mark.timeout(180)  # IPython starts slowly on a loaded machine
def test_ctrl_c_during_px_aborts_the_engines_work(  # type: ignore[no-untyped-def]
    cluster, tmp_path: Path, spawned
) -> None:
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"))
    args = [PYTHON, "-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor"]
    child = spawn(spawned, [*args, "--HistoryManager.enabled=False"], env, tmp_path)
    child.expect(PROMPT)
    connection = cluster.path / "corral-client.json"
    child.sendline(f"import corral; rc = corral.Client(connection_file={str(connection)!r})")
    child.expect(PROMPT)
    child.sendline("rc.wait_for_engines(2); rc.activate()")
    child.expect(PROMPT)
    for line in ("%%px --stream", "import time", "print('started', flush=True)", "time.sleep(120)"):
        child.sendline(line)
    child.sendline("")
    child.sendline("")
    child.expect(r"\[stdout:\d\] started")
    interrupted = time.monotonic()
    child.sendintr()
    child.expect(r"%px interrupted: aborted on engine\(s\) \[0, 1\]")
    child.expect(PROMPT)
    assert time.monotonic() - interrupted < 60  # the sleeps were interrupted, not waited out
    assert "Traceback" not in child.before
    child.sendline("%px print('usable')")
    child.expect(PROMPT)
    assert sorted(render(child.before)[1:]) == ["[stdout:0] usable", "[stdout:1] usable"]
    child.sendline("exit()")
    child.expect(pexpect.EOF)
