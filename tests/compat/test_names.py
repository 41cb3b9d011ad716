"""ipyparallel 9.2's public names exist in corral with the same meaning (issue 11): the error
tree and its inheritance, RemoteError/CompositeError behaviour, the ``error`` module, the
constants and helpers. No cluster needed."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io

import pytest

import corral
from corral import error, errors

# ipyparallel 9.2's top-level names that corral provides (introspected from its wheel); left
# out: bind_kernel and load_jupyter_server_extension (corral engines are not IPython kernels,
# and corral's dashboard is not a Jupyter server extension; docs/compat.md).
IPYPARALLEL_NAMES = """
ALL_COMPLETED AlreadyDisplayedError AsyncHubResult AsyncMapResult AsyncResult BroadcastView
Client Cluster CompositeError Dependency DependencyTimeout DirectView EngineError
FIRST_COMPLETED FIRST_EXCEPTION IPythonError ImpossibleDependency InvalidDependency
KernelError LoadBalancedView NoEnginesRegistered ParallelFunction Reference RemoteError
RemoteFunction TaskAborted TaskRejectError TaskTimeout TimeoutError UnmetDependency
collect_exceptions depend error interactive parallel remote require use_cloudpickle
use_dill use_pickle version_info
ViewExecutor register_joblib_backend ClusterManager MultipleInstanceError PrePickled can
can_map uncan uncan_map dependent serialize_object deserialize_object pack_apply_message
unpack_apply_message wrap_exception unwrap_exception
""".split()


def test_every_name_exists_and_is_listed_for_tab_completion() -> None:
    missing = [name for name in IPYPARALLEL_NAMES if not hasattr(corral, name)]
    assert not missing
    assert set(IPYPARALLEL_NAMES) <= set(dir(corral))
    assert set(IPYPARALLEL_NAMES) <= set(corral.__all__)
    assert corral.error is error and corral.RemoteError is errors.RemoteError
    assert isinstance(corral.version_info, tuple) and corral.version_info[:2] == (0, 1)
    with pytest.raises(AttributeError):
        corral.NoSuchName  # noqa: B018


def test_the_error_tree_catches_what_ipyparallel_users_catch() -> None:
    kernel = [
        error.RemoteError,
        error.CompositeError,
        error.TaskAborted,
        error.TaskTimeout,
        error.EngineError,
        error.UnmetDependency,
        error.ImpossibleDependency,
        error.DependencyTimeout,
        error.InvalidDependency,
        error.NoEnginesRegistered,
        error.TaskRejectError,
        error.AlreadyDisplayedError,
    ]
    for cls in kernel:
        assert issubclass(cls, error.KernelError) and issubclass(cls, error.IPythonError)
    assert issubclass(error.ImpossibleDependency, error.UnmetDependency)
    assert issubclass(error.DependencyTimeout, error.ImpossibleDependency)
    assert issubclass(error.InvalidDependency, error.ImpossibleDependency)
    assert issubclass(error.CompositeError, error.RemoteError)
    assert issubclass(error.TimeoutError, TimeoutError) and issubclass(error.TimeoutError, OSError)
    assert issubclass(errors.InvalidTarget, IndexError)  # rc[99] raises IndexError there


def remote(ename: str = "ValueError", engine_id: int = 1, method: str = "apply") -> Exception:
    return error.RemoteError(
        ename,
        "bad input",
        "Traceback (most recent call last):\n  in f\nValueError: bad input",
        {"engine_id": engine_id, "engine_uuid": f"uuid-{engine_id}", "method": method},
    )


def test_remote_error_carries_a_string_traceback_and_engine_info() -> None:
    err = remote()
    assert isinstance(err, error.RemoteError)
    assert err.ename == "ValueError" and err.evalue == "bad input"
    assert isinstance(err.traceback, str) and "in f" in err.traceback
    assert err.engine_info == {"engine_id": 1, "engine_uuid": "uuid-1", "method": "apply"}
    assert err.engine_id == 1
    # ipyparallel's shape: where it was raised, then the remote traceback
    assert err.render_traceback() == ["[1:apply]", *err.traceback.splitlines()]
    assert err._render_traceback_() == err.render_traceback()  # what IPython shows
    assert error.RemoteError("E", "v").render_traceback() == ["[Engine Exception]", "E: v"]
    assert str(err) == "[1:apply] ValueError: bad input"  # the same label as its traceback
    assert str(error.RemoteError("E", "v")) == "[Engine Exception] E: v"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        err.print_traceback()
    assert "ValueError: bad input" in out.getvalue()
    assert error.RemoteError("E", "v", ["a", "b"]).traceback == "a\nb"  # lines are joined


def test_composite_error_holds_tuples_and_raises_each() -> None:
    errs = [remote(engine_id=i, method="execute") for i in range(6)]
    composite = error.CompositeError("one or more exceptions from call to method: f", errs)
    assert all(isinstance(entry, tuple) and len(entry) == 4 for entry in composite.elist)
    ename, evalue, tb, info = composite.elist[2]
    assert (ename, evalue, info["engine_id"], info["method"]) == (
        "ValueError",
        "bad input",
        2,
        "execute",
    )
    assert isinstance(tb, str)
    with pytest.raises(error.RemoteError) as raised:
        composite.raise_exception(3)
    assert raised.value.engine_id == 3
    with pytest.raises(IndexError):
        composite.raise_exception(6)
    lines = composite.render_traceback()
    assert "more exceptions" in lines[-1]  # tb_limit caps what is printed
    assert sum("[0:execute]" in line for line in lines) == 1
    # as ipyparallel renders it (and IPython shows it): per error its label, its traceback
    # and a blank line; no message line and no summary beside the label
    tb_lines = errs[0].traceback.splitlines()
    assert lines[: len(tb_lines) + 2] == ["[0:execute]:", *tb_lines, ""]
    assert lines[-1] == "... 2 more exceptions ..." and len(lines) == 4 * (len(tb_lines) + 2) + 1
    assert composite._render_traceback_() == lines
    assert composite.render_traceback(1) == ["[1:execute]:", *tb_lines]
    assert composite.msg == composite.message == "one or more exceptions from call to method: f"
    assert "[3:execute]" in str(composite) and "[4:execute]" not in str(composite)
    assert str(composite).endswith("\n... 2 more exceptions ...")  # capped at tb_limit too
    rebuilt = error.CompositeError("again", composite.elist)  # from tuples too
    assert [e[-1] for e in rebuilt.elist] == [e[-1] for e in composite.elist]


def test_collect_exceptions_raises_a_composite_error_even_for_one() -> None:
    assert error.collect_exceptions([1, 2], "f") == [1, 2]
    with pytest.raises(error.CompositeError) as info:
        error.collect_exceptions([1, remote()], "f")
    assert len(info.value.elist) == 1
    assert info.value.msg == "one or more exceptions raised in: f"  # ipyparallel's words


def test_wire_errors_come_back_as_their_class() -> None:
    for cls in (error.TaskTimeout, error.InvalidDependency, error.DependencyTimeout):
        content = errors.error_content(cls(cls.__name__, "why"), engine_id=0, engine_uuid="u")
        rebuilt = errors.error_from_content(content)
        assert type(rebuilt) is cls and rebuilt.engine_id == 0


def test_concurrent_constants_and_serializer_switches() -> None:
    assert corral.ALL_COMPLETED == concurrent.futures.ALL_COMPLETED
    assert corral.FIRST_COMPLETED == concurrent.futures.FIRST_COMPLETED
    assert corral.FIRST_EXCEPTION == concurrent.futures.FIRST_EXCEPTION
    corral.use_cloudpickle()  # corral's one format: nothing to switch
    corral.use_pickle()
    with pytest.raises(NotImplementedError, match="dill"):
        corral.use_dill()


def test_dependency_is_a_set_with_check_and_unreachable() -> None:
    class Submitted:
        msg_ids = ["c", "d"]

    mixed = [str(i) for i in range(10)]
    completed = {str(i) for i in range(0, 10, 2)}
    failed = {str(i) for i in range(1, 10, 2)}
    dep = corral.Dependency(mixed, success=True, failure=False)
    assert isinstance(dep, set) and dep == set(mixed)
    assert not dep.check(completed, failed) and dep.unreachable(completed, failed)
    dep.all = False
    assert dep.check(completed, failed) and not dep.unreachable(completed, failed)
    only_failures = corral.Dependency(sorted(completed), success=False, failure=True)
    assert not only_failures.check(completed, failed)
    assert only_failures.unreachable(completed, failed)
    nested = corral.Dependency(["a", Submitted(), corral.Dependency(["e"])])
    assert nested == {"a", "c", "d", "e"} and nested.msg_ids == frozenset(nested)
    assert corral.Dependency([]).check(set())  # empty: always met
    assert nested.as_dict()["msg_ids"] == ["a", "c", "d", "e"]


def test_wrap_and_unwrap_exception_round_trip() -> None:
    try:
        {}["missing"]
    except KeyError:
        content = corral.wrap_exception({"engine_id": 3})
    assert content["status"] == "error" and content["ename"] == "KeyError"
    assert content["engine_info"] == {"engine_id": 3}
    assert any("KeyError" in line for line in content["traceback"])
    remote = corral.unwrap_exception(content)
    assert isinstance(remote, error.RemoteError) and remote.ename == "KeyError"
    assert remote.engine_info["engine_id"] == 3 and "KeyError" in remote.traceback
    with pytest.raises(RuntimeError, match="except block"):
        corral.wrap_exception()


def test_multiple_instance_error_is_a_key_error() -> None:
    assert issubclass(corral.MultipleInstanceError, KeyError)
    assert issubclass(corral.MultipleInstanceError, errors.CorralError)
    assert error.MultipleInstanceError is corral.MultipleInstanceError


def test_already_displayed_error_summarises() -> None:
    composite = error.CompositeError(
        "one or more exceptions", [("ValueError", "bad", "tb 0", {"engine_id": 0})] * 3
    )
    shown = error.AlreadyDisplayedError(composite)
    assert str(shown) == "3 errors" and shown.render_traceback() == ["3 errors"]
    assert shown.original_error is composite and isinstance(shown, error.RemoteError)
