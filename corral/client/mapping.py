"""Cutting sequences into parts for engines, and joining the parts' results back.

``scatter`` and ``DirectView.map`` give each engine one contiguous part (:func:`partition`);
``LoadBalancedView.map`` sends one task per fixed-size chunk (:func:`chunk`, of
:func:`default_chunksize` items unless the caller chose); ``gather`` and
every map result put the pieces back together (:func:`join`). These are pure functions, so
their guarantees are property-tested without a cluster:

- parts are contiguous slices, in order, whose lengths differ by at most one;
- a part has the type of the sequence it came from (list, tuple, str, bytes, range), and a
  numpy array's parts are views onto its memory: scattering an array copies nothing here;
- ``join(partition(seq, n))`` equals ``seq`` (a list stands in for types that cannot be
  sliced, such as generators and sets).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "as_sequence",
    "chunk",
    "common_length",
    "default_chunksize",
    "holds_items",
    "join",
    "part_items",
    "partition",
]

# what partition and chunk cut a sequence into (as_sequence makes any other iterable a list)
_PART_TYPES = (list, tuple, str, bytes, bytearray, range, memoryview)

# Chunks per engine that a default load-balanced map aims for: twice the scheduler's default
# prefetch (16 outstanding tasks per engine), so that most chunks are still handed out as
# engines free up rather than all at submission.
CHUNKS_PER_ENGINE = 32


def as_sequence(values: Iterable[Any]) -> Sequence[Any]:
    """``values`` if it can be sliced and measured (list, tuple, str, bytes, range, numpy
    array), else a list of it: a generator or set is read once, here, in iteration order."""
    if _is_ndarray(values):
        return values  # type: ignore[return-value]
    if isinstance(values, list | tuple | str | bytes | bytearray | range | memoryview):
        return values
    return list(values)


def common_length(sequences: Sequence[Sequence[Any]]) -> int:
    """The one length of several sequences mapped together; ValueError if they differ.

    Unlike the builtin ``map``, a parallel map refuses to silently drop the tail of the
    longer sequences: that is almost always a bug in the caller's data.
    """
    if not sequences:
        raise ValueError("map needs at least one sequence")
    lengths = {len(seq) for seq in sequences}
    if len(lengths) > 1:
        raise ValueError(f"the sequences to map over have different lengths: {sorted(lengths)}")
    return lengths.pop()


def _bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Start and stop of ``parts`` contiguous slices covering ``range(length)``; the first
    ``length % parts`` slices are one longer than the rest."""
    base, extra = divmod(length, parts)
    bounds = []
    start = 0
    for index in range(parts):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def partition(seq: Iterable[Any], parts: int) -> list[Any]:
    """``seq`` cut into ``parts`` contiguous slices of near-equal length (some may be empty
    when ``seq`` is shorter than ``parts``). Slicing keeps the type, and numpy slices are views.
    """
    if parts < 1:
        raise ValueError(f"cannot partition into {parts} parts; need at least 1")
    values = as_sequence(seq)
    return [values[start:stop] for start, stop in _bounds(len(values), parts)]


def chunk(seq: Iterable[Any], size: int) -> list[Any]:
    """``seq`` cut into contiguous slices of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunksize must be at least 1, not {size}")
    values = as_sequence(seq)
    return [values[start : start + size] for start in range(0, len(values), size)]


def default_chunksize(items: int, engines: int) -> int:
    """Items per task of a load-balanced map called without ``chunksize``.

    One task per item costs a full round trip through the scheduler per item (about half a
    millisecond of CPU over all processes), which dominates short functions; one big chunk per
    engine loses load balancing for long or uneven ones. This keeps CHUNKS_PER_ENGINE chunks
    per engine (``engines`` taken as at least 1): a map of fewer items than that per engine,
    the usual shape of a map of long tasks, stays one task per item exactly as with
    ``chunksize=1``, and a long map still balances over many chunks with the final ones
    small relative to the whole. The task duration itself is not known at submission, so the
    scale comes from the item and engine counts only.
    """
    if items < 0:
        raise ValueError(f"a map cannot have {items} items")
    return max(1, items // (max(1, engines) * CHUNKS_PER_ENGINE))


def join(parts: Sequence[Any]) -> Any:
    """The concatenation of result parts, in order.

    numpy arrays are concatenated into one array, strings into one string, bytes into bytes,
    tuples into a tuple, and contiguous ranges into one range; anything else (lists, mixed
    types) into one list, where a part that is not a sequence scatter could have cut (a
    number, a dict, a set: see :func:`holds_items`) counts as one item, as in ipyparallel.
    """
    if not parts:
        return []
    first = parts[0]
    if _is_ndarray(first) and all(_is_ndarray(part) for part in parts):
        numpy = sys.modules["numpy"]
        dtypes = {part.dtype for part in parts}
        # one dtype is kept exactly (byte order included); mixed dtypes promote as numpy does
        return numpy.concatenate(parts, dtype=first.dtype if len(dtypes) == 1 else None)
    kind = type(first)
    if all(type(part) is kind for part in parts):
        if kind is str:
            return "".join(parts)
        if kind is bytes or kind is bytearray:
            return kind().join(parts)
        if kind is tuple:
            return tuple(itertools.chain.from_iterable(parts))
        if kind is range:
            joined = _join_ranges(parts)
            if joined is not None:
                return joined
    return list(itertools.chain.from_iterable(part_items(part) for part in parts))


def holds_items(part: Any) -> bool:
    """Whether a part (an engine's value of a gathered name, one call's result) is a
    sequence of items, of a type partition cuts (list, tuple, str, bytes, range, numpy
    array), rather than one item: a flattened scatter's single element, or whatever the
    engine holds under the name, such as a dict (not its keys) or a set."""
    return isinstance(part, _PART_TYPES) or _is_ndarray(part)


def part_items(part: Any) -> Iterable[Any]:
    """A part as items (see :func:`holds_items`): itself, or a lone value as one item."""
    return part if holds_items(part) else (part,)


def _join_ranges(parts: Sequence[range]) -> range | None:
    """One range equal to the parts laid end to end, or None if they do not line up."""
    nonempty = [part for part in parts if len(part)]
    if not nonempty:
        return parts[0]
    step = nonempty[0].step
    for previous, current in itertools.pairwise(nonempty):
        if current.step != step and len(current) > 1:
            return None
        if previous[-1] + step != current[0]:
            return None
    return range(nonempty[0][0], nonempty[-1][-1] + step, step)


def _is_ndarray(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)
