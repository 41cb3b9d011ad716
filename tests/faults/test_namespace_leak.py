"""An interactive function pickled by reference from an importable module (this one: the
engines import it too) runs in the engine's namespace, and brings into it only the module
globals it reads, not the whole module."""

from __future__ import annotations

import pytest

from corral.protocol.references import interactive

MODULE_CONSTANT = "from the module"
UNRELATED = "must not leak"


@interactive
def reads_pushed() -> object:
    return pushed_value * 2  # type: ignore[name-defined]  # noqa: F821 (pushed to the engine)


@interactive
def reads_a_module_global() -> object:
    return [MODULE_CONSTANT.upper() for _ in range(1)][0]


def engine_names(rc) -> list[str]:  # type: ignore[no-untyped-def]
    """The user names in engine 0's namespace."""
    rc[0].execute("names = sorted(n for n in globals() if not n.startswith('_'))", block=True)
    names: list[str] = rc[0].pull("names", block=True)
    return [name for name in names if name != "names"]


@pytest.mark.parametrize("repeat", [1, 2])
def test_interactive_function_from_a_module_brings_only_what_it_reads(rc, repeat: int) -> None:  # type: ignore[no-untyped-def]
    rc.clear(targets=0)
    rc[0].push({"pushed_value": 21}, block=True)
    assert rc[0].apply_sync(reads_pushed) == 42
    assert engine_names(rc) == ["pushed_value"]
    assert rc[0].apply_sync(reads_a_module_global) == "FROM THE MODULE"
    assert engine_names(rc) == ["MODULE_CONSTANT", "pushed_value"]
    # what the engine holds wins over the module's copy
    rc[0].push({"MODULE_CONSTANT": "engine copy"}, block=True)
    assert rc[0].apply_sync(reads_a_module_global) == "ENGINE COPY"
