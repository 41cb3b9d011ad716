"""Compile the modules of ``corral.native.COMPILED`` with mypyc, next to their sources, and
stamp the build (``make native``; ``make venv`` runs it).

mypyc type-checks the modules with the project's mypy settings (``pyproject.toml``), writes C
and builds one extension per module plus the group's shared library (``corral/_native__mypyc``)
with the machine's C compiler, in place. The group's C is a file per module (mypyc's
``multi_file``), compiled on every core at once: as the one file mypyc writes by default
(35 MB), it took the compiler 213 s on one core of a 2-core machine; as 73 files on both
cores, 71 s (about a quarter of ``make test``'s time on a fresh machine, before). The stamp
is written last, so an interrupted build is never used (``corral.native`` runs the sources
while the stamp is missing or stale). A build that fails leaves the sources in use and says
why; ``--require`` makes it an error.

    .venv/bin/python tools/build_native.py [--require]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """The build's chatter (mypyc's notes, every compiler command) into ``log``, at the file
    descriptors, so the compiler's own output goes there too."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def parallel_build_ext(jobs: int) -> type:
    """setuptools' build_ext, compiling each extension's C files ``jobs`` at a time (its own
    ``parallel`` builds several extensions at once, but one extension's files one by one, and
    the group's library is nearly all of the work). Threads: each runs the compiler as a
    process."""
    from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

    class ParallelBuildExt(build_ext):  # type: ignore[misc]
        def build_extension(self, ext: Any) -> None:
            compiler = self.compiler
            serial = compiler.compile

            def compile_all(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
                with ThreadPoolExecutor(jobs) as pool:
                    objects = pool.map(lambda source: serial([source], *args, **kwargs), sources)
                    return [path for each in objects for path in each]

            compiler.compile = compile_all
            try:
                super().build_extension(ext)
            finally:
                compiler.compile = serial

    return ParallelBuildExt


def build() -> None:
    """mypycify the list into a setuptools build_ext run in place (no setup.py, and no
    reading of pyproject.toml's packaging tables by an older setuptools)."""
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    from corral import native

    paths = [str(native.source_path(module).relative_to(ROOT)) for module in native.COMPILED]
    digests = native.source_digests()  # before mypyc reads them: an edit meanwhile is stale
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="corral-native-") as scratch:
        # a cache of its own: `make test` runs the lint's mypy beside this build, and two
        # mypy processes writing one .mypy_cache at once can end in mypy's INTERNAL ERROR
        # (seen in a clean-clone CI run)
        options = ["--cache-dir", str(ROOT / "build" / "mypy-cache")]
        extensions = mypycify(
            [*options, *paths], group_name=native.GROUP_NAME, target_dir=scratch, multi_file=True
        )
        # mypyc writes the group's header in the group's package folder ("corral/") and the
        # modules' C files at the top, which include it by its bare name
        header_dir = os.path.join(scratch, *native.GROUP_NAME.split(".")[:-1])
        for extension in extensions:
            extension.include_dirs.append(header_dir)
        dist = Distribution(
            {
                "ext_modules": extensions,
                "script_name": "build_native",
                "cmdclass": {"build_ext": parallel_build_ext(jobs)},
            }
        )
        command = dist.get_command_obj("build_ext")
        command.inplace = True
        command.build_temp = os.path.join(scratch, "temp")
        dist.run_command("build_ext")
    native.write_stamp(digests=digests)


def clean() -> None:
    """Remove a build's files (its stamp first, so no half is ever used)."""
    from corral import native

    (native.PACKAGE_DIR / native.STAMP_NAME).unlink(missing_ok=True)
    for path in native.built_files():
        path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--require", action="store_true", help="a failed build is an error")
    parser.add_argument("--clean", action="store_true", help="remove the build and stop")
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    os.environ["CORRAL_NATIVE"] = "0"  # this process imports corral from source
    if args.clean:
        clean()
        return 0
    from corral import native

    if not args.force and native.why_pure(environ={}) == "":
        print(f"make native: {len(native.COMPILED)} modules up to date")
        return 0
    if shutil.which(os.environ.get("CC", "cc")) is None:
        print("make native: no C compiler; corral runs from its sources", file=sys.stderr)
        return 1 if args.require else 0
    started = time.monotonic()
    clean()
    log = ROOT / "build" / "native.log"
    log.parent.mkdir(exist_ok=True)
    try:
        with quiet(log):
            build()
    except (Exception, SystemExit) as err:  # mypyc reports type errors by exiting
        tail = log.read_text(errors="replace").splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
        print(
            f"make native: build failed ({err!r}, the whole log: {log}); corral runs from its "
            "sources",
            file=sys.stderr,
        )
        return 1 if args.require else 0
    print(f"make native: {len(native.COMPILED)} modules in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
