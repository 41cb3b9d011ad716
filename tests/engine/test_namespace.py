"""The user namespace and output capture, without sockets: execute, apply, clear, streams."""

from __future__ import annotations

import sys
import threading
import time
import traceback
import types
from typing import Any

import cloudpickle
import pytest

from corral.engine.capture import OutputCapture
from corral.engine.namespace import Namespace, strip_engine_frames
from corral.protocol import references
from corral.protocol.references import Reference, bind_function, interactive
from tests.polling import until


@pytest.fixture
def ns() -> Namespace:
    return Namespace()


def main_function(source: str, name: str, **captured: Any) -> types.FunctionType:
    """A function as cloudpickle rebuilds one from a client's ``__main__``: its globals are only
    the names it captured."""
    scope: dict[str, Any] = {"__name__": "__main__", **captured}
    exec(source, scope)
    f = scope[name]
    # keep only what a by-value pickle would carry
    for key in list(scope):
        if key not in captured and key != "__name__":
            del scope[key]
    return f  # type: ignore[no-any-return]


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(strip_engine_frames(exc)))


# ---------------------------------------------------------------------- execute


def test_execute_returns_repr_of_last_expression(ns: Namespace) -> None:
    assert ns.execute("a = 2\na * 21") == "42"
    assert ns["a"] == 2
    assert ns.execute("'x'") == "'x'"


def test_execute_statements_and_none_give_no_result(ns: Namespace) -> None:
    assert ns.execute("b = 1") is None
    assert ns.execute("None") is None
    assert ns.execute("print") is not None
    assert ns.execute("") is None
    assert ns.execute("# only a comment") is None


def test_execute_is_compiled_whole_before_running(ns: Namespace) -> None:
    with pytest.raises(SyntaxError) as info:
        ns.execute("first = 1\ndef (:")
    assert "first" not in ns
    assert "corral/engine" not in formatted(info.value)
    assert info.value.filename == "<cell-1>"


def test_execute_runs_like_main_with_builtins(ns: Namespace) -> None:
    assert ns.execute("__name__") == "'__main__'"
    ns.execute("def f():\n    return len([1, 2])")
    assert ns["f"].__module__ == "__main__"
    assert ns.execute("f()") == "2"


def test_execute_does_not_inherit_future_flags(ns: Namespace) -> None:
    ns.execute("def g(x: int) -> int:\n    return x")
    assert ns["g"].__annotations__ == {"x": int, "return": int}


def test_execute_counts_and_tracebacks_show_the_cell_source(ns: Namespace) -> None:
    ns.execute("1")
    with pytest.raises(ZeroDivisionError) as info:
        ns.execute("x = 1\ny = x / 0")
    assert ns.execution_count == 2
    text = formatted(info.value)
    assert text.startswith("Traceback")
    assert "<cell-2>" in text
    assert "y = x / 0" in text
    assert "corral/engine" not in text


def test_execute_and_apply_share_the_namespace(ns: Namespace) -> None:
    ns.execute("shared = [1, 2, 3]")
    assert ns.apply(sum, (Reference("shared"),), {}) == 6


def test_clear_keeps_builtins(ns: Namespace) -> None:
    ns.execute("z = 5")
    ns.clear()
    assert "z" not in ns
    assert ns.execute("len('ab')") == "2"
    assert ns.execute("__name__") == "'__main__'"


# ---------------------------------------------------------------------- apply


def test_apply_plain_function_and_references(ns: Namespace) -> None:
    ns["a"] = 10
    ns["b"] = 3
    assert ns.apply(lambda x, y=0: x - y, (Reference("a"),), {"y": Reference("b")}) == 7


def test_references_are_resolved_one_container_deep(ns: Namespace) -> None:
    """As ipyparallel does: a Reference in a list, tuple or dict argument is resolved, one
    inside a deeper container is passed as it is; expressions are evaluated."""
    ns["a"] = 1
    assert ns.apply(lambda value: value, ([Reference("a")],), {}) == [1]
    assert ns.apply(lambda value: value, ({"k": Reference("a")},), {}) == {"k": 1}
    deeper = [[Reference("a")]]
    assert ns.apply(lambda value: value, (deeper,), {}) == [[Reference("a")]]
    ns["g"] = [5, 6]
    assert ns.apply(lambda value: value, (Reference("g[1]"),), {}) == 6


def test_missing_reference_is_a_clear_name_error(ns: Namespace) -> None:
    with pytest.raises(NameError, match="'nope' is not defined on the engine"):
        ns.apply(lambda x: x, (Reference("nope"),), {})


def test_interactive_function_reads_and_writes_the_namespace(ns: Namespace) -> None:
    source = "def f(n):\n    global total\n    total = base + n\n    return total\n"
    f = main_function(source, "f")
    ns["base"] = 100
    assert ns.apply(f, (5,), {}) == 105
    assert ns["total"] == 105
    assert ns.execute("total") == "105"


def test_interactive_functions_passed_as_arguments_use_the_namespace(ns: Namespace) -> None:
    """As ipyparallel's canning: a ``__main__`` function given as an argument, a keyword
    argument, or an item of a list, tuple or dict argument runs with the namespace as its
    globals too (its wave2D example passes a callback that appends to pushed lists)."""
    saver = main_function("def save(x):\n    global seen\n    seen.append(x)\n", "save")
    call_all = main_function("def call_all(fs, x):\n    for g in fs:\n        g(x)\n", "call_all")
    ns["seen"] = []
    assert ns.apply(lambda callback: callback(1), (saver,), {}) is None
    assert ns.apply(lambda callback=None: callback(2), (), {"callback": saver}) is None
    ns.apply(call_all, ([saver], 3), {})
    ns.apply(lambda fs: fs["k"](4), ({"k": saver},), {})
    assert ns["seen"] == [1, 2, 3, 4]
    deeper = [[saver]]  # one container deep only, as References
    assert ns.apply(lambda fs: fs[0][0].__globals__ is ns.user_ns, (deeper,), {}) is False


def test_decorated_function_from_any_module_is_interactive(ns: Namespace) -> None:
    scope: dict[str, Any] = {"__name__": "some.module"}
    exec("def g():\n    return value", scope)
    ns["value"] = "engine"
    assert ns.apply(interactive(scope["g"]), (), {}) == "engine"


def test_non_interactive_function_keeps_its_own_globals(ns: Namespace) -> None:
    scope: dict[str, Any] = {"__name__": "some.module", "value": "module"}
    exec("def g():\n    return value", scope)
    ns["value"] = "engine"
    assert ns.apply(scope["g"], (), {}) == "module"


def test_captured_names_fill_only_missing_names(ns: Namespace) -> None:
    source = "def f():\n    return (pushed, captured)\n"
    f = main_function(source, "f", pushed="client copy", captured="from client")
    ns["pushed"] = "engine value"
    assert ns.apply(f, (), {}) == ("engine value", "from client")
    assert ns["captured"] == "from client"
    assert ns["pushed"] == "engine value"


def test_only_globals_the_code_reads_are_copied(ns: Namespace) -> None:
    source = (
        "import json\n"
        "def f():\n"
        "    inner = lambda: [helper(x) for x in data]\n"
        "    return inner()\n"
        "def helper(x):\n"
        "    return x + 1\n"
    )
    scope: dict[str, Any] = {"__name__": "a.module", "data": [1, 2], "unrelated": "module"}
    exec(source, scope)
    assert ns.apply(interactive(scope["f"]), (), {}) == [2, 3]
    assert {name for name in ns.user_ns if not name.startswith("__")} == {"data", "helper"}


def test_the_names_a_code_reads_are_kept_by_code_object_and_bounded() -> None:
    """A function rebuilt for every call shares its code: its names are worked out once;
    another code object, even an equal one, is looked at itself; the cache is bounded."""
    make = "def f():\n    return [helper(x) for x in data] + [other]\n"
    first: dict[str, Any] = {}
    exec(make, first)
    code = first["f"].__code__
    assert references.global_names(code) == {"helper", "data", "other"}
    assert references.global_names(code) is references.global_names(code)
    for index in range(references.NAMES_KEPT + 10):
        scope: dict[str, Any] = {}
        exec(f"def g():\n    return name_{index}\n", scope)
        assert references.global_names(scope["g"].__code__) == {f"name_{index}"}
    assert len(references._names_by_code) <= references.NAMES_KEPT  # noqa: SLF001
    assert references.global_names(code) == {"helper", "data", "other"}


def test_rebinding_keeps_defaults_kwdefaults_closure_and_attributes(ns: Namespace) -> None:
    source = (
        "def outer():\n"
        "    hidden = 7\n"
        "    def f(a, b=2, *, c=3):\n"
        "        '''doc'''\n"
        "        return a + b + c + hidden + offset\n"
        "    return f\n"
    )
    scope: dict[str, Any] = {"__name__": "__main__"}
    exec(source, scope)
    f = scope["outer"]()
    f.custom = "kept"
    ns["offset"] = 1000
    bound = bind_function(f, ns.user_ns)  # the rule Namespace.apply binds with
    assert bound.__globals__ is ns.user_ns
    assert bound(1) == 1 + 2 + 3 + 7 + 1000
    assert bound(1, 0, c=0) == 1 + 7 + 1000
    assert (bound.custom, bound.__doc__, bound.__qualname__) == ("kept", "doc", f.__qualname__)


def test_cloudpickled_main_function_round_trip(ns: Namespace) -> None:
    f = main_function("def f(x):\n    return x * factor\n", "f", factor=3)
    g = cloudpickle.loads(cloudpickle.dumps(f))
    assert ns.apply(g, (2,), {}) == 6
    ns["factor"] = 10
    assert ns.apply(g, (2,), {}) == 20


def test_user_exceptions_propagate_with_user_frames_first(ns: Namespace) -> None:
    def user_code() -> None:
        raise ValueError("bad value")

    with pytest.raises(ValueError) as info:
        ns.apply(user_code, (), {})
    tb = strip_engine_frames(info.value).__traceback__
    assert tb is not None
    assert tb.tb_frame.f_code.co_name == "user_code"


def test_errors_raised_by_the_engine_itself_keep_no_engine_frames(ns: Namespace) -> None:
    with pytest.raises(NameError) as info:
        ns.resolve(Reference("absent"))
    assert "corral/engine" not in formatted(info.value)


def test_a_compiled_engine_frame_is_stripped_like_its_source(ns: Namespace) -> None:
    """A compiled engine module's function (``make native``) shows in a traceback under its
    source's path relative to the build: the interrupt gate's signal handler raising
    KeyboardInterrupt in the user's code is one. Made here with that file name, so the test
    means the same on the compiled build and from source."""
    handler: dict[str, Any] = {}
    exec(  # noqa: S102 - a function whose code names the compiled module's file
        compile(
            "def handle_sigint():\n    raise KeyboardInterrupt\n",
            "corral/engine/interrupts.py",
            "exec",
        ),
        handler,
    )

    def user_code() -> None:
        handler["handle_sigint"]()

    with pytest.raises(KeyboardInterrupt) as info:
        ns.apply(user_code, (), {})
    names = [
        frame.name for frame in traceback.extract_tb(strip_engine_frames(info.value).__traceback__)
    ]
    assert names == ["user_code"]


# ---------------------------------------------------------------------- output capture


class Published:
    """A publish callback that records calls, and can wait for text to arrive."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.event = threading.Event()

    def __call__(self, name: str, text: str) -> None:
        self.calls.append((threading.current_thread().name, name, text))
        self.event.set()

    def text(self, name: str) -> str:
        return "".join(text for _, stream, text in self.calls if stream == name)


def test_capture_keeps_text_and_publishes_it() -> None:
    published = Published()
    capture = OutputCapture()
    with capture.capture(published) as output:
        print("hello")
        print("oops", file=sys.stderr)
        sys.stdout.write("no newline")
    assert output.stdout == "hello\nno newline"
    assert output.stderr == "oops\n"
    assert published.text("stdout") == "hello\nno newline"
    assert published.text("stderr") == "oops\n"


def test_capture_restores_streams_even_on_error() -> None:
    before = sys.stdout, sys.stderr
    with pytest.raises(RuntimeError), OutputCapture().capture() as output:
        print("partial")
        raise RuntimeError
    assert (sys.stdout, sys.stderr) == before
    assert output.stdout == "partial\n"


def test_rapid_writes_are_coalesced_in_order() -> None:
    published = Published()
    capture = OutputCapture(flush_interval=10.0)
    with capture.capture(published):
        for index in range(500):
            print(index)
            if index % 100 == 0:
                print("err", index, file=sys.stderr)
    assert len(published.calls) <= 12  # first line at once, then one chunk per stream switch
    expected_out = "".join(f"{index}\n" for index in range(500))
    assert published.text("stdout") == expected_out
    streams = [name for _, name, _ in published.calls]
    assert streams[:2] == ["stdout", "stderr"]
    capture.close()


def test_pending_line_is_flushed_while_the_task_still_runs() -> None:
    published = Published()
    capture = OutputCapture(flush_interval=0.05)
    with capture.capture(published):
        print("first")  # published at once
        published.event.clear()
        print("second")  # within the interval: the flusher publishes it
        assert published.event.wait(5.0), "the pending line was not flushed during the task"
        assert published.text("stdout") == "first\nsecond\n"
    assert published.calls[-1][0] == "corral-output-flusher"
    capture.close()


def test_a_partial_line_is_published_by_the_flusher_while_the_task_runs() -> None:
    """``print(".", end="")`` progress is seen during the task (as ipykernel streams it),
    published by the flusher, never by the write itself."""
    published = Published()
    capture = OutputCapture(flush_interval=0.05)
    with capture.capture(published):
        sys.stdout.write("started")
        assert published.event.wait(5.0), "the partial line waited for the task's end"
        assert published.calls == [("corral-output-flusher", "stdout", "started")]
        for _ in range(3):
            print(".", end="")
        until(lambda: published.text("stdout") == "started...", 5, "the dots published")
        assert {thread for thread, _, _ in published.calls} == {"corral-output-flusher"}
    capture.close()


def test_a_line_written_in_pieces_is_published_whole() -> None:
    """``print("e")`` writes "e" and "\n" apart: the flusher leaves the first piece alone for
    an interval, so the line goes out as one chunk when its newline comes (the flusher used
    to publish a task's first partial line at once, splitting lines under load)."""
    published = Published()
    capture = OutputCapture(flush_interval=5.0)
    with capture.capture(published):
        sys.stdout.write("e")
        assert not published.event.wait(0.2), "a partial line was published at once"
        sys.stdout.write("\n")
    assert published.calls == [("MainThread", "stdout", "e\n")]
    capture.close()


def _flushers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "corral-output-flusher"}


def test_close_publishes_pending_text_and_joins_the_flusher() -> None:
    published = Published()
    capture = OutputCapture(flush_interval=30.0)
    before = _flushers()
    with capture.capture(published) as output:
        print("first")  # published at once
        print("second")  # within the interval: pending, the flusher waits for its deadline
        started = _flushers() - before
        assert len(started) == 1 and published.text("stdout") == "first\n"
        capture.close()
        assert published.text("stdout") == "first\nsecond\n"
        assert not next(iter(started)).is_alive()
        print("third")  # still kept for the reply; no flusher starts again
        assert not _flushers() - before
    assert output.stdout == published.text("stdout") == "first\nsecond\nthird\n"


def test_explicit_flush_publishes() -> None:
    published = Published()
    capture = OutputCapture(flush_interval=0.0)
    with capture.capture(published):
        print("partial", end="", flush=True)
        assert published.text("stdout") == "partial"


def test_capture_is_reusable_and_tasks_do_not_mix() -> None:
    capture = OutputCapture()
    with capture.capture() as first:
        print("one")
    with capture.capture() as second:
        print("two")
    assert (first.stdout, second.stdout) == ("one\n", "two\n")


def test_a_silent_task_between_two_that_print_keeps_nothing_of_theirs() -> None:
    """A task that printed nothing reuses the capture's lists as they are (they are empty):
    neither the text before it nor text written between tasks leaks into a task's output."""
    published = Published()
    capture = OutputCapture()
    with capture.capture(published) as first:
        print("one", file=sys.stderr)
    with capture.capture(published) as silent:
        pass
    stray = capture._streams[0]  # type: ignore[index]  # a reference kept by user code
    stray.write("between tasks\n")
    with capture.capture(published) as quiet_again:
        pass
    with capture.capture(published) as third:
        print("three")
    assert (first.stdout, first.stderr) == ("", "one\n")
    assert (silent.stdout, silent.stderr) == ("", "")
    assert (quiet_again.stdout, quiet_again.stderr) == ("", "")
    assert (third.stdout, third.stderr) == ("three\n", "")
    assert published.text("stdout") == "three\n"


def test_a_task_that_closes_its_stdout_does_not_break_the_next() -> None:
    """The stand-in streams are reused from task to task: a closed one is replaced."""
    capture = OutputCapture()
    with capture.capture() as first:
        print("one")
        sys.stdout.close()
        sys.stderr.close()
    with capture.capture() as second:
        assert not sys.stdout.closed
        print("two")
        sys.stdout.writelines(["three\n"])  # a TextIOBase method that checks closed
    assert (first.stdout, second.stdout) == ("one\n", "two\nthree\n")


def test_kept_text_is_bounded_but_everything_is_published() -> None:
    published = Published()
    capture = OutputCapture(max_chars=10)
    with capture.capture(published) as output:
        print("x" * 25)
    assert output.stdout.startswith("x" * 10 + "\n[corral: 16 more characters")
    assert published.text("stdout") == "x" * 25 + "\n"


def test_a_failing_publisher_does_not_break_print(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, text: str) -> None:
        raise OSError("socket gone")

    with OutputCapture().capture(broken) as output:
        print("still works")
    assert output.stdout == "still works\n"
    assert "publishing" in caplog.text


def test_captured_stream_rejects_bytes() -> None:
    with OutputCapture().capture(), pytest.raises(TypeError, match="must be str"):
        sys.stdout.write(b"bytes")  # type: ignore[arg-type]


def test_capture_overhead_is_small() -> None:
    capture = OutputCapture()
    started = time.perf_counter()
    for _ in range(1000):
        with capture.capture():
            pass
    assert time.perf_counter() - started < 20.0  # linear, not quadratic: no timing claim
