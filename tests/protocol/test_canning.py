"""ipyparallel's serializer names over corral's format (corral/protocol/canning.py)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from corral.errors import SerializationError
from corral.protocol import canning

SCALE = 10


def scaled(x: int) -> int:
    return x * SCALE


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_can_wraps_functions_and_classes_for_plain_pickle() -> None:
    offset = 5
    canned = canning.can(lambda x: x + offset)
    assert isinstance(canned, canning.Canned)
    restored = canning.uncan(pickle.loads(pickle.dumps(canned)))
    assert restored(1) == 6
    cls = canning.uncan(pickle.loads(pickle.dumps(canning.can(Point))))
    assert cls(3).x == 3
    data = {"a": [1, 2]}
    assert canning.can(data) is data and canning.uncan(data) is data
    assert canning.can(len) is len  # builtins go by reference anyway


def test_uncan_with_globals_rebinds_a_function() -> None:
    restored = canning.uncan(canning.can(scaled), {"SCALE": 3})
    assert restored(2) == 6
    assert canning.uncan(canning.can(scaled))(2) == 20


def test_can_map_and_uncan_map() -> None:
    canned = canning.can_map({"f": scaled, "n": 4})
    assert isinstance(canned["f"], canning.Canned) and canned["n"] == 4
    restored = canning.uncan_map(pickle.loads(pickle.dumps(canned)))
    assert restored["f"](1) == 10 and restored["n"] == 4


def test_prepickled_unpickles_as_the_object_and_freezes_its_bytes() -> None:
    values = [1, 2, 3]
    wrapped = canning.PrePickled(values)
    values.append(4)  # after wrapping: not sent
    assert pickle.loads(pickle.dumps(wrapped)) == [1, 2, 3]
    frames = canning.serialize_object({"w": wrapped})
    obj, rest = canning.deserialize_object(frames)
    assert obj == {"w": [1, 2, 3]} and rest == []


def test_serialize_and_apply_messages_have_ipyparallel_shapes() -> None:
    array = np.arange(1000.0)
    frames = canning.serialize_object(array, buffer_threshold=1024, item_threshold=64)
    assert len(frames) == 2  # the pickle and the array's zero-copy buffer
    obj, rest = canning.deserialize_object(frames)
    assert np.array_equal(obj, array) and rest == []
    packed = canning.pack_apply_message(scaled, (2,), {}, buffer_threshold=1024)
    f, args, kwargs = canning.unpack_apply_message(packed, copy=False)
    assert f(*args, **kwargs) == 20
    namespace: dict[str, Any] = {"SCALE": 7}
    f, args, kwargs = canning.unpack_apply_message(packed, g=namespace)
    assert f(*args, **kwargs) == 14
    with pytest.raises(SerializationError):
        canning.unpack_apply_message(canning.serialize_object([1, 2]))
