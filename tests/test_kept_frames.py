"""corral.kept_frames: a message's small frames kept joined, given back frame by frame."""

from __future__ import annotations

import gc

import orjson

from corral.kept_frames import compact, expand, is_compact
from corral.sockets import COPY_BELOW


def frames(tag: str) -> list[bytes]:
    return [b"<sig>", orjson.dumps({"msg_id": tag}), b"{}", b"{}", orjson.dumps({"k": 1})]


def test_small_frames_are_joined_and_given_back_the_same() -> None:
    message = frames("a")
    kept = compact(message)
    assert is_compact(kept) and kept[0] == b"".join(message)
    assert expand(kept) == message and compact(kept) == kept
    gc.collect()
    assert not gc.is_tracked(kept)  # bytes and ints: the collector stopped looking at it


def test_a_large_or_zero_copy_frame_is_kept_as_it_is() -> None:
    """A result's large buffers are never copied to be kept (one large frame, or small ones
    that add up); nor is a frame that is not bytes."""
    large = [*frames("a"), b"x" * COPY_BELOW]
    kept = compact(large)
    assert not is_compact(kept) and kept[-1] is large[-1] and expand(kept) == large
    many = [*frames("c"), *[b"y" * (COPY_BELOW // 4)] * 4]  # small, together large
    assert compact(many)[-1] is many[-1] and expand(compact(many)) == many
    view = [*frames("b"), memoryview(b"result")]
    assert compact(view)[-1] is view[-1]
    assert compact([b"one"]) == (b"one",) and expand(compact([b"one"])) == [b"one"]
    assert compact([]) == () and expand(()) == []
