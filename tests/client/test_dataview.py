"""Round-robin cutting and joining for ``scatter``/``gather`` with ``dist="r"`` (pure)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from corral.client.dataview import interleave, round_robin


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=7))
def test_round_robin_then_interleave_is_the_identity(items: list[int], parts: int) -> None:
    cut = round_robin(items, parts)
    assert len(cut) == parts
    assert all(part == items[index::parts] for index, part in enumerate(cut))
    assert interleave(cut) == items


def test_types_are_kept() -> None:
    assert round_robin("abcde", 2) == ["ace", "bd"] and interleave(["ace", "bd"]) == "abcde"
    assert interleave(round_robin((1, 2, 3), 2)) == (1, 2, 3)
    array = np.arange(7, dtype=np.int16)
    back = interleave(round_robin(array, 3))
    assert isinstance(back, np.ndarray) and back.dtype == np.int16
    assert np.array_equal(back, array)
    assert interleave(round_robin(iter(range(5)), 2)) == [0, 1, 2, 3, 4]


def test_values_that_are_not_sequences_stay_whole() -> None:
    """dist="r" gather of a name the engines hold as a dict: the dicts, not their keys."""
    assert interleave([{"k": 1}, {"k": 2}]) == [{"k": 1}, {"k": 2}]
    assert interleave([[0, 2], 1]) == [0, 1, 2]  # a flattened scatter's single element
