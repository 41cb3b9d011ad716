"""Partitioning and joining: pure functions, property-tested."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from corral.client.mapping import (
    CHUNKS_PER_ENGINE,
    as_sequence,
    chunk,
    common_length,
    default_chunksize,
    join,
    partition,
)
from corral.client.outcomes import items_of

PARTS = st.integers(min_value=1, max_value=40)

SEQUENCES = st.one_of(
    st.lists(st.integers()),
    st.lists(st.text(max_size=3)).map(tuple),
    st.text(),
    st.binary(),
    st.builds(
        range,
        st.integers(-50, 50),
        st.integers(-50, 50),
        st.integers(1, 5) | st.integers(-5, -1),
    ),
)


def _check_parts(seq: Any, parts: list[Any], n: int) -> None:
    assert len(parts) == n
    sizes = [len(part) for part in parts]
    assert sum(sizes) == len(seq)
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True), "longer parts come first"
    assert all(type(part) is type(seq) for part in parts)


@given(SEQUENCES, PARTS)
def test_partition_is_contiguous_balanced_and_joins_back(seq: Any, n: int) -> None:
    parts = partition(seq, n)
    _check_parts(seq, parts, n)
    assert join(parts) == seq
    assert type(join(parts)) is type(seq)


@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=1, max_dims=3)), PARTS)
def test_numpy_parts_are_views_and_join_bit_exact(array: np.ndarray, n: int) -> None:
    parts = partition(array, n)
    _check_parts(array, parts, n)
    for part in parts:
        assert part.base is array or part.base is array.base  # a view: no copy
        if part.size:
            assert np.shares_memory(part, array)
    joined = join(parts)
    assert joined.dtype == array.dtype and joined.shape == array.shape
    assert joined.tobytes() == array.tobytes()


@given(SEQUENCES, st.integers(min_value=1, max_value=20))
def test_chunk_sizes_and_join(seq: Any, size: int) -> None:
    chunks = chunk(seq, size)
    assert all(len(c) == size for c in chunks[:-1])
    assert not chunks or 1 <= len(chunks[-1]) <= size
    assert len(chunks) == -(-len(seq) // size)
    assert join(chunks) == seq if chunks else len(seq) == 0


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=512))
def test_default_chunksize_keeps_many_chunks_per_engine(items: int, engines: int) -> None:
    size = default_chunksize(items, engines)
    chunks = -(-items // size)
    assert size >= 1
    if items < max(1, engines) * CHUNKS_PER_ENGINE:
        assert size == 1  # short maps (long tasks) stay one task per item
    else:
        assert (
            max(1, engines) * CHUNKS_PER_ENGINE
            <= chunks
            < 2 * max(1, engines) * (CHUNKS_PER_ENGINE + 1)
        )


@given(st.lists(st.lists(st.integers()), min_size=1))
def test_join_lists_concatenates_in_order(parts: list[list[int]]) -> None:
    assert join(parts) == [x for part in parts for x in part]


def test_partition_of_iterables_without_slicing_reads_them_once() -> None:
    generator = (i * i for i in range(7))
    assert partition(generator, 3) == [[0, 1, 4], [9, 16], [25, 36]]
    assert as_sequence({3}) == [3]
    assert as_sequence(x for x in "ab") == ["a", "b"]


def test_shorter_than_parts_gives_empty_tail_parts() -> None:
    assert partition([1, 2], 4) == [[1], [2], [], []]
    assert partition(range(0), 2) == [range(0, 0), range(0, 0)]
    assert join([[], []]) == []
    assert join([]) == []


def test_join_mixed_and_scalar_parts_gives_a_list() -> None:
    assert join([[1, 2], (3,), "x"]) == [1, 2, 3, "x"]
    assert join([1, [2, 3], 4]) == [1, 2, 3, 4]  # a flattened scatter's single elements
    assert join([range(0, 3), range(5, 7)]) == [0, 1, 2, 5, 6]
    assert join([range(0, 4, 2), range(4, 8, 2)]) == range(0, 8, 2)


def test_join_keeps_values_that_are_not_sequences_whole() -> None:
    """gather of a name the engines hold as a dict or set: one item per engine, as in
    ipyparallel, not the dicts' keys run together."""
    assert join([{"k": 1}, {"k": 2}]) == [{"k": 1}, {"k": 2}]
    assert join([{1, 2}, {3}]) == [{1, 2}, {3}]
    assert join([[1], {"k": 1}, (2,)]) == [1, {"k": 1}, 2]
    assert join([5, 6]) == [5, 6]
    assert list(items_of({"k": 1})) == [{"k": 1}] and list(items_of([1, 2])) == [1, 2]
    assert list(items_of(range(2))) == [0, 1] and list(items_of(7)) == [7]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition([1], 0)
    with pytest.raises(ValueError, match="chunksize"):
        chunk([1], 0)
    with pytest.raises(ValueError, match="-1 items"):
        default_chunksize(-1, 2)
    with pytest.raises(ValueError, match="different lengths"):
        common_length([[1, 2], [1]])
    with pytest.raises(ValueError, match="at least one"):
        common_length([])
    assert common_length([[1, 2], "ab", range(2)]) == 2
