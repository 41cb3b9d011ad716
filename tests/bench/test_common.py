"""bench/common.py's ``collect``: a wait that ends early says why, not only how many are missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # common imports its neighbours by name
    try:
        spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_common"] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


class Pending:
    """A result that never finishes; its ``get`` fails as a lost connection would."""

    def done(self) -> bool:
        return False


class Done:
    def done(self) -> bool:
        return True


def test_collect_names_what_ended_the_wait() -> None:
    common = load()

    def get(result: object, seconds: float) -> object:
        if isinstance(result, Pending):
            raise ConnectionError("the controller went away")
        return 1

    with pytest.raises(common.LostResults) as caught:
        common.collect([Done(), Pending(), Pending()], get, 300)
    message = str(caught.value)
    assert message.startswith("2 of 3 results had not arrived "), message
    assert "(limit 300 s): ConnectionError: the controller went away" in message
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_collect_returns_every_value_in_order() -> None:
    common = load()
    assert common.collect([Done(), Done()], lambda result, seconds: seconds > 0, 5) == [True, True]
