"""Bad input at the API: what cannot be sent fails at the caller before anything leaves; what
goes wrong on the engine (a result that cannot be serialized, a hostile exception, a function
whose module the engine lacks) comes back as a clear RemoteError, and the engine stays up."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RemoteError, SerializationError
from tests.conftest import start_cluster


def identity(x: object) -> object:
    return x


def numbers() -> Iterator[int]:
    yield 1


class ExplodesWhenPickled:
    """Stands for a result too large to serialize: its pickling runs out of memory."""

    def __reduce__(self) -> object:
        raise MemoryError("simulated: no memory left to serialize the result")


class HostileError(Exception):
    """An exception whose message, repr and pickling all fail."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")

    def __reduce__(self) -> object:
        raise TypeError("cannot pickle this error")


def raise_hostile() -> None:
    raise HostileError("boom")


@pytest.mark.parametrize(
    "bad",
    [threading.Lock(), numbers(), {"nested": [threading.RLock()]}],
    ids=["lock", "generator", "nested lock"],
)
def test_unpicklable_arguments_fail_at_the_caller(rc, bad: object) -> None:  # type: ignore[no-untyped-def]
    sent_before = len(rc.history)
    for submit in (
        lambda: rc[0].apply_async(identity, bad),
        lambda: rc[:].apply_async(identity, x=bad),
        lambda: rc.load_balanced_view().apply_async(identity, bad),
        lambda: rc.load_balanced_view().map_async(identity, [1, bad]),
        lambda: rc[:].push({"bad": bad}),
    ):
        with pytest.raises(SerializationError, match=type(_innermost(bad)).__name__):
            submit()
    assert len(rc.history) == sent_before, "a request was sent although it failed"
    assert rc[0].apply_sync(identity, 1) == 1


def _innermost(bad: object) -> object:
    return bad["nested"][0] if isinstance(bad, dict) else bad


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (threading.Lock, "lock"),
        (numbers, "generator"),
        (ExplodesWhenPickled, "MemoryError"),
    ],
    ids=["lock", "generator", "memory"],
)
def test_result_that_cannot_be_serialized_is_a_remote_error(rc, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    for view in (rc[0], rc.load_balanced_view()):
        with pytest.raises(RemoteError) as info:
            view.apply_sync(make)
        assert info.value.ename == "SerializationError"
        assert "could not be serialized" in info.value.evalue and expected in info.value.evalue
    assert rc[:].apply_sync(os.getpid) == rc[:].apply_sync(os.getpid)  # same engines, still up


def test_hostile_exception_is_a_clear_remote_error(rc) -> None:  # type: ignore[no-untyped-def]
    pids = rc[:].apply_sync(os.getpid)
    for view in (rc[0], rc.load_balanced_view()):
        with pytest.raises(RemoteError) as info:
            view.apply_sync(raise_hostile)
        assert info.value.ename == "HostileError"
        assert "HostileError" in info.value.evalue
        assert "raise_hostile" in info.value.traceback
    assert rc[:].apply_sync(os.getpid) == pids


def test_function_from_a_module_the_engine_lacks(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "only_on_the_client.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from only_on_the_client import triple  # type: ignore[import-not-found]

        assert triple(2) == 6
        for view in (rc[0], rc.load_balanced_view()):
            with pytest.raises(RemoteError) as info:
                view.apply_sync(triple, 2)
            assert info.value.ename == "SerializationError"
            assert "No module named 'only_on_the_client'" in info.value.evalue
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_on_the_client", None)
    assert rc[0].apply_sync(identity, 7) == 7


@pytest.mark.timeout(90)
def test_engine_result_size_limit(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 1, engine_args=["--max-result-bytes", "1000000"])
    rc = cluster.start()
    try:
        assert len(rc[0].apply_sync(bytes, 900_000)) == 900_000
        with pytest.raises(RemoteError) as info:
            rc[0].apply_sync(bytes, 2_000_000)
        assert info.value.ename == "SerializationError"
        assert "2000" in info.value.evalue and "--max-result-bytes" in info.value.evalue
        assert rc[0].apply_sync(identity, "still up") == "still up"
    finally:
        cluster.stop()
