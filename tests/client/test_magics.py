"""%px, %%px, %autopx, %pxresult and %pxconfig through IPython's InteractiveShell against a
live cluster, checking the text a user sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from corral.client.asyncresult import AsyncResult
from tests.conftest import running_cluster


@pytest.fixture
def shell(rc) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    ip = InteractiveShell.instance(config=config)
    ip.user_ns["rc"] = rc
    try:
        yield ip
    finally:
        InteractiveShell.clear_instance()


def lines(text: str) -> list[str]:
    """Streamed lines, in engine order (engines print at the same time, in any order)."""
    return sorted(text.splitlines())


def run(shell: Any, capsys: Any, cell: str) -> tuple[str, str]:
    """Run a cell; what it printed to stdout and stderr."""
    capsys.readouterr()
    shell.run_cell(cell)
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_px_without_an_active_view_says_what_to_do(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "%load_ext corral")
    out, err = run(shell, capsys, "%px 1")
    assert "UsageError: no active view" in err and "rc[:].activate()" in err
    assert "Traceback" not in out + err


def test_px_line_and_cell(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate()")
    assert run(shell, capsys, "%px a = 5") == ("", "")
    out, _ = run(shell, capsys, "%px print(a)")
    assert lines(out) == ["[stdout:0] 5", "[stdout:1] 5"]
    out, _ = run(shell, capsys, "%%px\nb = a * 2\nb")
    shown = out.splitlines()
    assert len(shown) == 2
    assert shown[0].startswith("Out[0:") and shown[0].endswith("]: 10")
    assert shown[1].startswith("Out[1:") and shown[1].endswith("]: 10")
    # a rich result: the terminal shows its text form on the prompt's line, as ipyparallel
    out, _ = run(shell, capsys, "%%px\nfrom IPython.display import Math\nMath('x^2')")
    shown = [line for line in out.splitlines() if line.startswith("Out[")]
    assert len(shown) == 2 and all("<IPython.core.display.Math object>" in s for s in shown)


def test_px_stream_shows_lines_as_they_come(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate()")
    cell = (
        "%%px --stream\nimport sys\nfor i in range(3):\n    print('tick', i)\n"
        "print('E', file=sys.stderr)"
    )
    out, err = run(shell, capsys, cell)
    for engine in (0, 1):
        assert [line for line in out.splitlines() if line.startswith(f"[stdout:{engine}]")] == [
            f"[stdout:{engine}] tick {i}" for i in range(3)
        ]
        assert f"[stderr:{engine}] E" in err.splitlines()
    out, _ = run(shell, capsys, "%%px --no-stream\nprint('x')\nprint('y')")
    assert out == "[stdout:0]\nx\ny\n[stdout:1]\nx\ny\n"


def test_px_options(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate()")
    out, _ = run(shell, capsys, "%%px --targets 1\nprint('one')")
    assert out == "[stdout:1] one\n"
    out, _ = run(shell, capsys, "%%px -t ::2 --verbose\nprint('even')")
    assert out == "Parallel execution on engine(s): [0]\n[stdout:0] even\n"
    out, _ = run(shell, capsys, "%%px --noblock --save-name saved\n3 + 4")
    assert out.startswith("Out[") and "AsyncResult(execute)" in out
    out, _ = run(shell, capsys, "%pxresult")
    assert [line.split("]: ")[1] for line in out.splitlines()] == ["7", "7"]
    assert [r.execute_result["data"]["text/plain"] for r in shell.user_ns["saved"].get(30)] == [
        "7",
        "7",
    ]
    out, _ = run(shell, capsys, "%%px --group-outputs=engine --no-stream\nprint('p')\n1")
    shown = out.splitlines()
    assert shown[0] == "[stdout:0] p" and shown[1].startswith("Out[0:")
    assert shown[2] == "[stdout:1] p" and shown[3].startswith("Out[1:")
    run(shell, capsys, "%%px --local\nboth = 11")
    assert shell.user_ns["both"] == 11
    out, _ = run(shell, capsys, "%px print(both)")
    assert lines(out) == ["[stdout:0] 11", "[stdout:1] 11"]


def test_pxconfig_and_autopx(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "view = rc.activate()")
    run(shell, capsys, "%pxconfig --targets 0 --verbose")
    out, _ = run(shell, capsys, "%px print('cfg')")
    assert out == "Parallel execution on engine(s): 0\n[stdout:0] cfg\n"
    run(shell, capsys, "%pxconfig --targets all --no-verbose --noblock")
    out, _ = run(shell, capsys, "%px 1")
    assert "AsyncResult(execute)" in out
    run(shell, capsys, "%pxconfig --block")
    out, _ = run(shell, capsys, "%autopx")
    assert out == "%autopx enabled\n"
    assert run(shell, capsys, "c = 7") == ("", "")
    out, _ = run(shell, capsys, "print(c)")
    assert lines(out) == ["[stdout:0] 7", "[stdout:1] 7"]
    out, _ = run(shell, capsys, "%autopx")
    assert out == "%autopx disabled\n"
    assert "c" not in shell.user_ns
    out, _ = run(shell, capsys, "print('local')")
    assert out == "local\n"


def test_suffix_gives_a_second_view_its_own_magics(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate(); rc.activate(1, '1')")
    out, _ = run(shell, capsys, "%px1 print('only one')")
    assert out == "[stdout:1] only one\n"
    out, _ = run(shell, capsys, "%%px1\nprint('cell')")
    assert out == "[stdout:1] cell\n"
    out, _ = run(shell, capsys, "%px print('all')")
    assert lines(out) == ["[stdout:0] all", "[stdout:1] all"]


def test_bad_input_prints_usage_not_a_traceback(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate()")
    for cell in (
        "%%px --bogus\n1",
        "%%px --group-outputs=colour\n1",
        "%pxconfig --targets 0:x",
        "%%px --targets 99\n1",
        "%pxresult --nope",
    ):
        out, err = run(shell, capsys, cell)
        assert "UsageError" in err, cell
        assert "Traceback" not in out + err, cell
    _, err = run(shell, capsys, "%%px --bogus\n1")
    assert "unrecognized arguments: --bogus" in err and "usage: %%px" in err
    _, err = run(shell, capsys, "%%px --targets 99\n1")
    assert "engine 99 is not registered" in err


def test_remote_errors_show_engine_and_exception(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    run(shell, capsys, "rc.activate()")
    out, err = run(shell, capsys, "%%px\nprint('before')\n1 / 0")
    text = out + err
    assert "[stdout:0] before" in text and "[stdout:1] before" in text
    # labelled per engine as ipyparallel's CompositeError renders them
    assert "ZeroDivisionError" in text and "[0:execute]" in text and "[1:execute]" in text
    # streaming (the default) showed each traceback as it failed: only a count follows
    assert "2 errors" in text and text.count("ZeroDivisionError:") == 2
    out, err = run(shell, capsys, "%%px --no-stream\n1 / 0")
    text = out + err
    # not streamed: the CompositeError as ipyparallel renders it, each engine's label and
    # traceback (whose last line names the error)
    assert text.count("ZeroDivisionError: division by zero") == 2
    assert "[0:execute]:\nTraceback" in text and "[1:execute]:\nTraceback" in text
    out, _ = run(shell, capsys, "%px print('still fine')")
    assert lines(out) == ["[stdout:0] still fine", "[stdout:1] still fine"]


def test_px_with_no_engines_says_so(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = Config()
    config.HistoryManager.enabled = False
    ip = InteractiveShell.instance(config=config)
    try:
        with running_cluster(tmp_path, 0) as cluster:
            ip.user_ns["empty"] = cluster.client
            run(ip, capsys, "empty.activate()")
            out, err = run(ip, capsys, "%px 1")
            assert "UsageError: no engines are registered" in err
            assert "Traceback" not in out + err
    finally:
        InteractiveShell.clear_instance()


def _ctrl_c_once_waiting(started: Path) -> Any:
    """A SIGALRM handler that plays Ctrl-C once the cell runs on the engines and %%px waits
    for it (re-arming itself until then), so the test does not depend on timing."""
    import signal
    import sys

    def on_alarm(signum: int, frame: Any) -> None:
        waiting = False
        while frame is not None:
            waiting = waiting or frame.f_code.co_name == "_finish"
            frame = frame.f_back
        if waiting and started.exists():
            raise KeyboardInterrupt
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    assert sys.platform != "win32"
    return signal.signal(signal.SIGALRM, on_alarm)


@pytest.mark.parametrize("option", ["", "--signal-on-interrupt 0"])
def test_ctrl_c_during_a_blocking_cell(shell, capsys, tmp_path: Path, option: str) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C: by default SIGINT, i.e. the cell is aborted on the engines; with another
    ``--signal-on-interrupt`` that signal is sent and %%px returns at once (signal 0 leaves
    the cell running, so the test then lets it finish)."""
    import signal

    started, release = tmp_path / "started", tmp_path / "release"
    cell = (
        "import os, time\n"
        f"open({str(started)!r}, 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('Exiting...')\n"
    )
    run(shell, capsys, "rc.activate()")
    previous = _ctrl_c_once_waiting(started)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        capsys.readouterr()
        shell.run_cell_magic("px", option, cell)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    sent = "SIGINT" if not option else "0"
    assert f"Received Keyboard Interrupt. Sending signal {sent} to engines..." in err
    assert "Exiting..." not in out
    result = shell._corral_magics[""].last_result
    if not option:
        assert "aborted on engine(s) [0, 1]" in err and result.done()
    else:
        release.touch()
        result.get(timeout=60)  # signal 0 changed nothing: the cell runs to its end
        assert [line.split("] ")[-1] for line in result.stdout] == ["Exiting...\n"] * 2


def test_px_follows_the_views_block_flag_and_sends_the_line_as_typed(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel: %px blocks when the view does (%pxconfig --block sets the flag), and
    ``{x}`` in the line is the engine's x, not expanded from the client namespace first."""
    rc = shell.user_ns["rc"]
    rc[:].push({"x": "engine"}, block=True)
    run(shell, capsys, "view = rc[:]; view.activate(); x = 'client'")
    assert shell.user_ns["view"].block is False
    run(shell, capsys, "ar = %px y = f'{x}'")
    ar = shell.user_ns["ar"]
    assert isinstance(ar, AsyncResult) and ar.get(timeout=30) is not None
    assert rc[:].pull("y", block=True) == ["engine", "engine"]
    run(shell, capsys, "%pxconfig --block")
    assert shell.user_ns["view"].block is True
    out, _ = run(shell, capsys, "%px print(y)")
    assert lines(out) == ["[stdout:0] engine", "[stdout:1] engine"]
    assert rc.activate().block is True  # Client.activate makes a blocking view, as there
    run(shell, capsys, "%pxconfig --verbose")
    run(shell, capsys, "rc[:].activate()")  # a new activation starts from the defaults
    assert not run(shell, capsys, "ar = %px 1")[0].startswith("Async parallel execution")


def test_a_client_made_in_ipython_activates_the_magics(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel's: with no %px yet, a new Client activates a blocking view of all."""
    from corral.client.client import Client

    rc = shell.user_ns["rc"]
    assert "px" not in shell.magics_manager.magics["line"]
    with Client(connection_file=rc.connection_file) as client:
        assert "px" in shell.magics_manager.magics["line"]
        out, _ = run(shell, capsys, "%px print('auto')")
        assert lines(out) == ["[stdout:0] auto", "[stdout:1] auto"]
        assert client is not rc


def test_verbose_targets_are_shortened_as_ipyparallel_shows_them() -> None:
    from corral.client.magics import _short

    assert _short(list(range(100))) == "[0, 1, 2, 3, ..., 96, 97, 98, 99]"
    assert _short(list(range(10))) == str(list(range(10)))
    assert _short("all") == "all" and _short(3) == "3"
