"""corral.native: the compiled build is used only while it matches its sources, all or none.

The decision is checked on a package folder made here (a stamp, sources, stand-in extension
files); the real build (``make native``, which ``make test`` requires) is checked by importing
its modules in fresh interpreters, from the built tree and from a copy with one source edited.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral import native

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def make_package(folder: Path, *, built: bool = True) -> Path:
    """A folder laid out as the package: every listed module's source, and when ``built`` a
    stand-in extension beside each and the stamp of the sources."""
    for module in native.COMPILED:
        source = native.source_path(module, folder)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {module}\n")
        if built:
            Path(str(source.with_suffix("")) + SUFFIX).write_bytes(b"")
    if built:
        native.write_stamp(package_dir=folder)
    return folder


def test_a_matching_build_is_used(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    assert native.why_pure(folder, environ={}) == ""


def test_no_stamp_means_sources(tmp_path: Path) -> None:
    folder = make_package(tmp_path, built=False)
    assert native.why_pure(folder, environ={}) == "not built (make native)"


def test_one_edited_module_turns_every_module_to_its_source(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    edited = native.COMPILED[len(native.COMPILED) // 2]
    with native.source_path(edited, folder).open("a") as source:
        source.write("x = 1\n")
    assert native.why_pure(folder, environ={}) == f"{edited} edited since the build (make native)"


def test_a_module_edited_during_the_build_is_stale_after_it(tmp_path: Path) -> None:
    """The stamp records the digests read before the build (tools/build_native.py): a source
    edited while the compiler ran is not what was compiled, and must not pass for it."""
    folder = make_package(tmp_path, built=True)
    before = native.source_digests(package_dir=folder)
    edited = native.COMPILED[0]
    with native.source_path(edited, folder).open("a") as source:
        source.write("y = 2\n")  # during the build
    native.write_stamp(package_dir=folder, digests=before)
    assert native.why_pure(folder, environ={}) == f"{edited} edited since the build (make native)"


def test_a_missing_extension_means_sources(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    module = native.COMPILED[-1]
    Path(str(native.source_path(module, folder).with_suffix("")) + SUFFIX).unlink()
    expected = f"{module} not built for this Python (make native)"
    assert native.why_pure(folder, environ={}) == expected


def test_an_extension_the_list_no_longer_names_means_sources(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    stray = folder / "controller" / "store" / ("base" + SUFFIX)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"")
    assert native.module_name(stray, folder) == "corral.controller.store.base"
    expected = f"{stray.name}: a module the build no longer lists (make native)"
    assert native.why_pure(folder, environ={}) == expected
    (folder / ("_native__mypyc" + SUFFIX)).write_bytes(b"")  # the group's library is no stray
    stray.unlink()
    assert native.why_pure(folder, environ={}) == ""


def test_a_stamp_of_another_list_or_unreadable_means_sources(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    stamp = folder / native.STAMP_NAME
    stamp.write_text(json.dumps({"corral.loop": "0"}))
    assert native.why_pure(folder, environ={}).startswith("built for another list")
    stamp.write_text("{not json")
    assert native.why_pure(folder, environ={}).startswith(f"unreadable {native.STAMP_NAME}")


def test_the_switch_turns_the_build_off(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    assert native.why_pure(folder, environ={native.ENV_SWITCH: "0"}) == "CORRAL_NATIVE=0"
    assert native.why_pure(folder, environ={native.ENV_SWITCH: "1"}) == ""


# ---------------------------------------------------------------- the real build

BUILT = native.why_pure(ROOT / "corral", environ={}) == ""
needs_build = pytest.mark.skipif(not BUILT, reason="this tree has no current `make native`")

PROBE = """
import json, sys
import corral
from corral import native
print(json.dumps({
    "state": native.install(),
    "files": {m: __import__(m, fromlist=["_"]).__file__ for m in native.COMPILED},
}))
"""


def probe(tree: Path, **env: str) -> dict[str, object]:
    """Import every listed module in a fresh interpreter from ``tree``'s package."""
    environ = {k: v for k, v in os.environ.items() if k != native.ENV_SWITCH}
    environ.update(PYTHONPATH=str(tree), **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environ,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


@needs_build
def test_the_built_tree_imports_every_module_compiled() -> None:
    result = probe(ROOT)
    assert result["state"] == ""
    files = result["files"]
    assert isinstance(files, dict)
    assert all(path.endswith(SUFFIX) for path in files.values()), files


@needs_build
def test_an_edit_after_the_build_runs_every_module_from_source(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "corral", tree / "corral", ignore=shutil.ignore_patterns("__pycache__"))
    assert probe(tree)["state"] == ""
    with (tree / "corral" / "bundles.py").open("a") as source:
        source.write("\nEDITED_AFTER_THE_BUILD = True\n")
    result = probe(tree)
    assert result["state"] == "corral.bundles edited since the build (make native)"
    files = result["files"]
    assert isinstance(files, dict)
    assert all(path.endswith(".py") for path in files.values()), files
    off = probe(ROOT, CORRAL_NATIVE="0")
    assert off["state"] == "CORRAL_NATIVE=0"
    assert isinstance(off["files"], dict)
    assert all(path.endswith(".py") for path in off["files"].values())
