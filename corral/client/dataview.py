"""Moving data between the client and a DirectView's engines: push, pull, scatter, gather,
dict-style access, and imports made on both sides (``sync_imports``).

All of it is ``apply`` of the small functions in :mod:`corral.client.remote` that read and
write the engine's namespace; this is a mixin of :class:`corral.client.view.DirectView`, kept
apart so that the view module holds addressing and submission only.

``scatter`` cuts a sequence into one part per engine: contiguous blocks (``dist="b"``, the
default; numpy arrays are sent as views without a copy) or round robin (``dist="r"``: item
``i`` goes to engine ``i % n``); ``gather`` with the same ``dist`` puts them back in order.
"""

from __future__ import annotations

import builtins
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from corral.client.mapping import as_sequence, join, part_items, partition
from corral.client.remote import pull_namespace, push_namespace

if TYPE_CHECKING:
    from corral.client.asyncmapresult import AsyncMapResult
    from corral.client.asyncresult import AsyncResult
    from corral.client.submitter import Target, Targets
    from corral.client.view import View

__all__ = ["DataMovement", "interleave", "round_robin"]

_DISTRIBUTIONS = ("b", "r")


def round_robin(seq: Iterable[Any], parts: int) -> list[Any]:
    """``seq`` dealt into ``parts`` like cards: item ``i`` into part ``i % parts``; each part
    keeps the type of ``seq`` where slicing allows (lists, tuples, str, numpy arrays)."""
    values = as_sequence(seq)
    return [values[index::parts] for index in range(parts)]


def interleave(parts: Sequence[Any]) -> Any:
    """The inverse of :func:`round_robin`: items taken from each part in turn, joined back
    into the type of the parts (one list, string, tuple or numpy array)."""
    items = [list(part_items(part)) for part in parts]
    merged = [
        item
        for group in itertools.zip_longest(*items, fillvalue=_MISSING)
        for item in group
        if item is not _MISSING
    ]
    numpy = sys.modules.get("numpy")
    if parts and numpy is not None and isinstance(parts[0], numpy.ndarray):
        return numpy.array(merged, dtype=parts[0].dtype)
    if parts and isinstance(parts[0], str | tuple):
        return join([type(parts[0])(merged) if isinstance(parts[0], tuple) else "".join(merged)])
    return merged


_MISSING = object()


def _check_dist(dist: str) -> None:
    if dist not in _DISTRIBUTIONS:
        raise ValueError(f"dist must be 'b' (blocks) or 'r' (round robin), not {dist!r}")


class DataMovement:
    """push/pull/scatter/gather of a DirectView (see the module doc)."""

    if TYPE_CHECKING:  # provided by DirectView and View
        track: bool

        @contextmanager
        def temp_flags(self, **flags: Any) -> Iterator[View]: ...
        def _block(self, block: bool | None) -> bool: ...
        def _resolve(self, targets: Targets) -> tuple[list[Target], bool]: ...
        def _send_all(self, calls: Iterable[tuple[Any, tuple[Any, ...], Target]]) -> list[str]: ...
        def _result(
            self,
            msg_ids: list[str],
            fname: str,
            single: bool = ...,
            owner: bool = ...,
            *,
            sent: bool = ...,
        ) -> AsyncResult: ...
        def _map_result(
            self,
            msg_ids: list[str],
            fname: str,
            ordered: bool,
            item_counts: list[int],
            return_exceptions: bool = ...,
            joiner: Callable[[Sequence[Any]], Any] = ...,
        ) -> AsyncMapResult: ...
        def _apply(
            self,
            f: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            *,
            block: bool,
            targets: Targets = ...,
        ) -> Any: ...
        def execute(
            self, code: str, silent: bool = ..., targets: Targets = ..., block: bool | None = ...
        ) -> AsyncResult: ...

    def push(
        self,
        ns: dict[str, Any],
        targets: Targets = None,
        block: bool | None = None,
        track: bool | None = None,
    ) -> Any:
        """Assign every name of ``ns`` in the engines' namespaces (``"a.b"`` sets attribute
        ``b`` of the engine's ``a``)."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        with self.temp_flags(track=self.track if track is None else track):
            return self._apply(push_namespace, (ns,), {}, block=self._block(block), targets=targets)

    def pull(
        self,
        names: str | Sequence[str],
        targets: Targets = None,
        block: bool | None = None,
    ) -> Any:
        """The value of ``names`` (a name or ``"a.b"``, or a list: a list of values) on each
        engine."""
        wanted = names if isinstance(names, str) else list(names)
        return self._apply(pull_namespace, (wanted,), {}, block=self._block(block), targets=targets)

    def update(self, ns: dict[str, Any]) -> Any:
        """``push(ns)`` with the view's ``block``."""
        return self.push(ns)

    def get(self, names: str | Sequence[str]) -> Any:
        """``pull(names, block=True)``."""
        return self.pull(names, block=True)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"index a DirectView by a name in the engines' namespace, not {name!r}")
        return self.pull(name, block=True)

    def scatter(
        self,
        key: str,
        seq: Iterable[Any],
        dist: str = "b",
        flatten: bool = False,
        targets: Targets = None,
        block: bool | None = None,
        track: bool | None = None,
    ) -> Any:
        """Cut ``seq`` into one part per engine (see the module doc for ``dist``) and assign
        each part to ``key`` there. ``flatten``: a part of one element is assigned as that
        element."""
        _check_dist(dist)
        resolved, _ = self._resolve(targets)
        cut = partition if dist == "b" else round_robin
        with self.temp_flags(track=self.track if track is None else track):
            msg_ids = self._send_all(
                (push_namespace, ({key: part[0] if flatten and len(part) == 1 else part},), target)
                for part, target in zip(cut(seq, len(resolved)), resolved, strict=True)
            )
            result = self._result(msg_ids, "scatter")
        if self._block(block):
            result.get()
            return None
        return result

    def gather(
        self,
        key: str,
        dist: str = "b",
        targets: Targets = None,
        block: bool | None = None,
    ) -> Any:
        """The parts of ``key`` on each engine joined in engine order (the inverse of
        :meth:`scatter` with the same ``dist``)."""
        _check_dist(dist)
        resolved, _ = self._resolve(targets)
        msg_ids = self._send_all((pull_namespace, (key,), target) for target in resolved)
        joiner = interleave if dist == "r" else join
        result = self._map_result(msg_ids, "gather", True, [1] * len(msg_ids), joiner=joiner)
        return result.get() if self._block(block) else result

    @contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports written in the ``with`` block are made on the engines too (and here,
        unless ``local=False``); each is announced unless ``quiet``::

            with view.sync_imports():
                import numpy
        """
        caller_globals = sys._getframe(2).f_globals
        real_import = builtins.__import__
        statements: list[str] = []

        def importing(
            name: str,
            globals: dict[str, Any] | None = None,  # noqa: A002 - __import__'s signature
            locals: dict[str, Any] | None = None,  # noqa: A002
            fromlist: Sequence[str] | None = (),
            level: int = 0,
        ) -> Any:
            if globals is caller_globals and level == 0:
                # announced in ipyparallel's words: "importing numpy on engine(s)",
                # "importing path,sep from os on engine(s)"
                if fromlist:
                    statements.append(f"from {name} import {', '.join(fromlist)}")
                    what = f"{','.join(fromlist)} from {name}"
                else:
                    statements.append(f"import {name}")
                    what = name
                if not quiet:
                    print(f"importing {what} on engine(s)")
                if not local:
                    return None
            return real_import(name, globals, locals, fromlist, level)

        builtins.__import__ = importing  # type: ignore[assignment]
        try:
            yield
        finally:
            builtins.__import__ = real_import
        if statements:
            self.execute("\n".join(statements), block=True)

    @property
    def importer(self) -> Any:
        """``with view.importer: import x`` is ``with view.sync_imports(): import x``."""
        return self.sync_imports()
