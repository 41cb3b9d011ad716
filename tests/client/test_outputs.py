"""Output while tasks run and afterwards, on a real cluster whose engines have IPython:
stream_output, display_outputs, display() and rich results, IPython syntax in execute."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import cloudpickle
import pytest

from corral.errors import RemoteError
from tests.polling import file_appears, until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def print_then_wait(flag: str) -> str:

    print("first line", flush=True)
    print("partial ", end="", flush=True)
    file_appears(flag, 30)
    print("end")
    print("to stderr", file=sys.stderr)
    return "done"


def test_stream_output_prints_while_the_task_runs(rc, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "go"
    ar = rc.load_balanced_view().apply_async(print_then_wait, str(flag))
    seen: list[str] = []

    def printed(text: str) -> bool:
        seen.append(capsys.readouterr().out)
        return text in "".join(seen)

    with ar.stream_output():
        # the first line is on screen while the task still waits for the flag
        until(lambda: printed("first line\n"), 30, "the first line")
        assert not ar.done()
        flag.touch()
        assert ar.get(timeout=30) == "done"
    captured = capsys.readouterr()
    out = "".join(seen) + captured.out
    engine = ar.engine_id
    assert f"[stdout:{engine}] first line\n[stdout:{engine}] partial end\n" in out
    assert f"[stderr:{engine}] to stderr\n" in captured.err


def test_stream_output_of_several_engines_is_prefixed_and_complete(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    code = "import sys\nfor i in range(3):\n    print('line', i)\nprint('oops', file=sys.stderr)"
    ar = rc[:].execute(code)
    with ar.stream_output():
        ar.get(timeout=30)
    captured = capsys.readouterr()
    for engine in rc.ids:
        lines = [
            line for line in captured.out.splitlines() if line.startswith(f"[stdout:{engine}]")
        ]
        assert lines == [f"[stdout:{engine}] line {i}" for i in range(3)]
        assert f"[stderr:{engine}] oops" in captured.err.splitlines()


def test_display_outputs_groupings(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    ar = rc[:].execute(
        "import sys\nprint('hello')\nprint('warn', file=sys.stderr)\n6 * 7", silent=False
    )
    ar.get(timeout=30)
    capsys.readouterr()
    ar.display_outputs()  # by type: every stdout, every stderr, then results
    by_type = capsys.readouterr()
    out_lines = by_type.out.splitlines()
    assert out_lines[:2] == ["[stdout:0] hello", "[stdout:1] hello"]
    assert out_lines[2].startswith("Out[0:") and out_lines[2].endswith("]: 42")
    assert by_type.err.splitlines() == ["[stderr:0] warn", "[stderr:1] warn"]
    ar.display_outputs(groupby="engine")
    by_engine = capsys.readouterr().out.splitlines()
    assert by_engine[0] == "[stdout:0] hello" and by_engine[1].startswith("Out[0:")
    assert by_engine[2] == "[stdout:1] hello" and by_engine[3].startswith("Out[1:")
    ar.display_outputs(result_only=True)
    assert "[stdout" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="groupby"):
        ar.display_outputs(groupby="colour")


def test_multiline_output_puts_the_label_on_its_own_line(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    ar = rc[[0]].execute("print('a')\nprint('b')")
    ar.get(timeout=30)
    capsys.readouterr()
    ar.display_outputs()
    assert capsys.readouterr().out == "[stdout:0]\na\nb\n"


def test_a_single_engine_result_is_shown_without_labels(rc, capsys) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel shows ``rc[i].execute(...)``: the text as printed, the result as the
    reply shows itself."""
    ar = rc[0].execute("import sys\nprint(5555)\nprint('w', file=sys.stderr)\n6 * 7", silent=False)
    ar.get(timeout=30)
    capsys.readouterr()
    ar.display_outputs()
    out, err = capsys.readouterr()
    assert out.startswith("5555\nOut[0:") and out.endswith("]: 42\n") and err == "w\n"
    ar.display_outputs(result_only=True)
    out, err = capsys.readouterr()
    assert out.startswith("Out[0:") and out.endswith("]: 42\n") and err == ""
    quiet = rc[0].execute("a = 5")
    quiet.get(timeout=30)
    quiet.display_outputs()
    assert capsys.readouterr() == ("", "")
    failed = rc[0].execute("print(5555)\n1/0")
    failed.get(timeout=30, return_exceptions=True)
    failed.display_outputs()
    assert capsys.readouterr() == ("5555\n", "")


def test_display_and_rich_results_reach_the_client(rc) -> None:  # type: ignore[no-untyped-def]
    code = (
        "from IPython.display import HTML, display\n"
        "print('before')\n"
        "display(HTML('<b>bold</b>'))\n"
        "HTML('<i>result</i>')"
    )
    ar = rc[0].execute(code, silent=False)
    reply = ar.get(timeout=30)
    md = ar.metadata
    assert md["stdout"] == "before\n"
    assert [output["data"]["text/html"] for output in md["outputs"]] == ["<b>bold</b>"]
    assert md["execute_result"]["data"]["text/html"] == "<i>result</i>"
    assert reply.execute_result["data"]["text/html"] == "<i>result</i>"


def test_a_rich_result_keeps_its_metadata(rc) -> None:  # type: ignore[no-untyped-def]
    """An image's width travels with it: ``_repr_png_`` gives (data, metadata) as IPython's."""
    import base64

    code = "from IPython.display import Image\nImage(data=b'garbage', format='png', width=10)"
    reply = rc[0].execute(code, silent=False).get(timeout=30)
    data, metadata = reply._repr_png_()
    assert data == base64.b64encode(b"garbage").decode("ascii") and metadata == {"width": 10}
    assert reply.execute_result["metadata"] == {"image/png": {"width": 10}}
    plain = rc[0].execute("6 * 7", silent=False).get(timeout=30)
    assert plain.execute_result["metadata"] == {} and plain._repr_png_() is None


def display_from_a_function() -> int:
    from IPython.display import Markdown, display

    display(Markdown("*from apply*"))
    return 1


def test_display_in_an_applied_function(rc) -> None:  # type: ignore[no-untyped-def]
    ar = rc.load_balanced_view().apply_async(display_from_a_function)
    assert ar.get(timeout=30) == 1
    assert ar.metadata["outputs"][0]["data"]["text/markdown"] == "*from apply*"


def ipython_imported() -> bool:
    return "IPython" in sys.modules


def display_with_the_builtin() -> str:
    display({"text/plain": "by the builtin"}, raw=True)  # type: ignore[name-defined]  # noqa: F821
    return type(get_ipython()).__name__  # type: ignore[name-defined]  # noqa: F821


def test_the_shell_is_made_at_its_first_use(tmp_path: Path) -> None:
    """An engine makes its IPython shell when first needed, not at start (5 MB and 45 ms an
    engine): each way of needing it, as the first task of a fresh engine, works as it does on
    an engine whose shell was made at start."""
    from tests.conftest import running_cluster

    with running_cluster(tmp_path, 4) as fresh:
        rc = fresh.client
        assert rc[:].apply_sync(ipython_imported) == [False] * 4
        # importing IPython in user code (the import goes on, then the shell is made)
        ar = rc[0].apply_async(display_from_a_function)
        assert ar.get(timeout=30) == 1
        assert ar.metadata["outputs"][0]["data"]["text/markdown"] == "*from apply*"
        # the builtins, with no import
        ar = rc[1].apply_async(display_with_the_builtin)
        assert ar.get(timeout=30) == "EngineInteractiveShell"
        assert [o["data"]["text/plain"] for o in ar.metadata["outputs"]] == ["by the builtin"]
        # a cell
        reply = rc[2].execute("%time 6 * 7", silent=False, block=True)
        assert reply.execute_result["data"]["text/plain"] == "42"
        assert rc[:].apply_sync(ipython_imported) == [True, True, True, False]
        assert rc[3].apply_sync(lambda: __import__("os").environ.get("MPLBACKEND")) == (
            "module://matplotlib_inline.backend_inline"
        )


def test_ipython_syntax_in_execute(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[0]
    ar = dv.execute(
        "!echo from-the-shell\nvalue = 3\n%time squared = value ** 2\nsquared", silent=False
    )
    reply = ar.get(timeout=30)
    assert "from-the-shell" in ar.stdout
    assert reply.execute_result["data"]["text/plain"] == "9"
    ar = dv.execute("squared?")
    ar.get(timeout=30)
    assert "Type:" in ar.stdout and "int" in ar.stdout
    with pytest.raises(RemoteError, match="SyntaxError"):
        dv.execute("x = (1 +", block=True)
    rc.clear(targets=[0])
    assert (
        dv.execute("%time 1 + 1", silent=False, block=True).execute_result["data"]["text/plain"]
        == "2"
    )


def test_get_result_from_another_client_has_the_displays(rc, cluster) -> None:  # type: ignore[no-untyped-def]
    from corral.client.client import Client

    ar = rc[1].execute("from IPython.display import HTML, display\ndisplay(HTML('<p>kept</p>'))")
    ar.get(timeout=30)
    with Client(cluster.path / "corral-client.json") as other:
        fetched = other.get_result(ar.msg_ids[0])
        fetched.get(timeout=30)
        assert fetched.metadata["outputs"][0]["data"]["text/html"] == "<p>kept</p>"


def test_an_engine_without_ipython_runs_plain_python(tmp_path: Path) -> None:
    from tests.conftest import running_cluster

    with running_cluster(tmp_path, 1, engine_args=["--no-ipython"]) as plain:
        dv = plain.client[0]
        assert dv.execute("x = 6\nx * 7", silent=False, block=True).execute_result["data"] == {
            "text/plain": "42"
        }
        with pytest.raises(RemoteError, match=r"SyntaxError: .*pip install 'corral\[ipython\]'"):
            dv.execute("%time x", block=True)
        with pytest.raises(RemoteError, match="SyntaxError") as raised:
            dv.execute("x = (1 +", block=True)
        assert "corral[ipython]" not in str(raised.value)


def test_ipython_events_fire_around_each_cell(rc) -> None:  # type: ignore[no-untyped-def]
    """``pre_execute`` and ``post_execute`` fire around an execute, as in a kernel: what a
    ``post_execute`` callback displays is part of that cell's outputs."""
    code = (
        "from IPython.display import display\n"
        "def shown_after():\n"
        "    display({'text/plain': 'after the cell'}, raw=True)\n"
        "    get_ipython().events.unregister('post_execute', shown_after)\n"
        "get_ipython().events.register('post_execute', shown_after)\n"
        "print('in the cell')"
    )
    ar = rc[0].execute(code, silent=False)
    ar.get(timeout=30)
    assert ar.stdout == "in the cell\n"
    assert [output["data"]["text/plain"] for output in ar.metadata["outputs"]] == ["after the cell"]
    later = rc[0].execute("print('next')", silent=False)
    later.get(timeout=30)
    assert later.metadata["outputs"] == []  # it unregistered itself


def test_a_figure_drawn_in_a_cell_reaches_the_client(rc) -> None:  # type: ignore[no-untyped-def]
    """As on ipyparallel's engines (Jupyter kernels): matplotlib's inline backend shows each
    figure a cell drew as an image when the cell ends, and closes it."""
    code = (
        "import matplotlib, matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.title('on the engine')\n"
        "backend = matplotlib.get_backend()"
    )
    ar = rc[0].execute(code, silent=False)
    ar.get(timeout=60)
    outputs = ar.metadata["outputs"]
    assert len(outputs) == 1 and "image/png" in outputs[0]["data"], outputs
    assert base64.b64decode(outputs[0]["data"]["image/png"]).startswith(b"\x89PNG")
    assert rc[0].pull("backend", block=True) == "module://matplotlib_inline.backend_inline"
    assert rc[0].apply_sync(lambda: __import__("matplotlib.pyplot").pyplot.get_fignums()) == []


def test_matplotlib_and_pylab_magics_on_engines(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's test_px_matplotlib and test_magic_pylab: ``%matplotlib inline`` and
    ``%pylab inline`` work on engines (no GUI event loop is needed for them); a backend that
    needs one is refused with a clear error."""
    ar = rc[0].execute("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])")
    ar.get(timeout=60)
    assert len(ar.metadata["outputs"]) == 1
    rc[0].execute("%pylab inline", block=True)
    with pytest.raises(RemoteError, match="no GUI event loop for 'tk'"):
        rc[0].execute("get_ipython().enable_gui('tk')", block=True)
