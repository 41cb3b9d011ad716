"""Functions bound to a view: ``@view.remote()`` and ``@view.parallel()``.

A RemoteFunction runs the whole call remotely (``view.apply``). A ParallelFunction splits its
sequence arguments into parts, calls the function once per part remotely, and joins the
results; its ``map`` applies the function to each element instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.client.remote import call_chunk, map_chunk

if TYPE_CHECKING:
    from corral.client.view import View

__all__ = ["ParallelFunction", "RemoteFunction", "parallel", "remote"]


def remote(
    view: View, block: bool | None = None, **flags: Any
) -> Callable[[Callable[..., Any]], RemoteFunction]:
    """Decorator: calling the function runs it remotely through ``view`` (``view.remote()``)."""
    return view.remote(block, **flags)


def parallel(
    view: View, dist: str = "b", block: bool | None = None, **flags: Any
) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """Decorator: the function runs on parts of its sequence arguments in parallel
    (``view.parallel()``)."""
    return view.parallel(dist, block, **flags)


class RemoteFunction:
    """``f`` bound to ``view``: ``rf(*args)`` is ``view.apply(f, *args)`` with ``block``
    (None: the view's own flag at call time) and the view's other ``flags`` set for the call."""

    def __init__(
        self, view: View, f: Callable[..., Any], block: bool | None = None, **flags: Any
    ) -> None:
        if not callable(f):
            raise TypeError(f"remote needs a callable, got {type(f).__name__}")
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        functools.update_wrapper(self, f)
        name = getattr(f, "__name__", repr(f))
        self.__doc__ = f"{type(self).__name__} wrapping {name}\n\n{f.__doc__ or ''}".rstrip()

    def _block(self) -> bool:
        return self.view.block if self.block is None else self.block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.view.temp_flags(**self.flags):
            return self.view._apply(self.func, args, kwargs, block=self._block())


class ParallelFunction(RemoteFunction):
    """``f`` called on parts of its sequence arguments, in parallel (see the module doc).

    ``pf(seq)`` calls ``f(part)`` once per engine (direct view) or per ``chunksize`` items
    (load-balanced view) and joins the returned parts; ``pf.map(seq)`` calls ``f(item)``.
    ``return_exceptions``: a failed call's (or item's) error stands in its place in the
    result instead of the call raising a CompositeError.
    """

    def __init__(
        self,
        view: View,
        f: Callable[..., Any],
        dist: str = "b",
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        **flags: Any,
    ) -> None:
        if dist != "b":
            raise ValueError(f"only dist='b' (contiguous blocks) is supported, not {dist!r}")
        if chunksize is not None and not _balanced(view):
            # a direct view splits the sequence once per engine: said, as ipyparallel does
            warnings.warn("`chunksize` is ignored unless load balancing", UserWarning, stacklevel=3)
        super().__init__(view, f, block, **flags)
        self.chunksize = chunksize
        self.ordered = ordered
        self.return_exceptions = return_exceptions

    def __call__(self, *sequences: Any) -> Any:
        with self.view.temp_flags(**self.flags):
            return self.view._map(
                call_chunk,
                self.func,
                sequences,
                block=self._block(),
                chunksize=self.chunksize,
                ordered=self.ordered,
                return_exceptions=self.return_exceptions,
            )

    def map(self, *sequences: Any) -> Any:
        """``f`` applied to each element (to each tuple of elements, for several sequences)."""
        with self.view.temp_flags(**self.flags):
            return self.view._map(
                map_chunk,
                self.func,
                sequences,
                block=self._block(),
                chunksize=self.chunksize,
                ordered=self.ordered,
                return_exceptions=self.return_exceptions,
            )


def _balanced(view: View) -> bool:
    from corral.client.balanced import LoadBalancedView  # (balanced imports this module)

    return isinstance(view, LoadBalancedView)
