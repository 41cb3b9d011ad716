"""Frames -> objects: the reading half of :mod:`corral.protocol.serialize` (its module doc
describes the wire format), with the format's marker, version and checksum, which both halves
share. Kept apart so that each half stays one role: the pickler there, the guarded and fast
unpicklers here.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import zlib
from collections.abc import Sequence
from typing import Any, Final

import zmq

from corral.errors import ImportNeeded, SerializationError
from corral.protocol import functioncache, functiontemplates
from corral.protocol.session import frame_view

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"CRL"
HEADER: Final = _MAGIC + bytes([FORMAT_VERSION])
CRC_SIZE: Final = 4
PICKLE_START: Final = len(HEADER) + CRC_SIZE
_CALL_LIMIT: Final = 2 * functioncache.FRAME_LIMIT  # over this a call is never framed in two

FrameLike = bytes | bytearray | memoryview | zmq.Frame


def _as_view(frame: object, index: int) -> memoryview:
    if isinstance(frame, zmq.Frame):
        frame = frame_view(frame)
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise SerializationError(f"frame {index} is a {type(frame).__name__}, not bytes-like")
    view = memoryview(frame)
    if not view.c_contiguous:
        raise SerializationError(f"frame {index} is not contiguous memory")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


# The bytes of the opcodes that make an unpickler look a global up (GLOBAL, INST,
# STACK_GLOBAL, EXT1/2/4): a pickle without any (a number, a short string) cannot import, and
# skips the slower guarded unpickler. Data bytes may match too: that only costs the guard.
_MAY_IMPORT: Final = re.compile(rb"[ci\x93\x82-\x84]")


class _LoadedOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses to import: every global it needs must come from a module
    already in ``sys.modules`` (else :class:`~corral.errors.ImportNeeded`)."""

    def find_class(self, module_name: str, name: str) -> Any:
        if module_name not in sys.modules:
            raise ImportNeeded(f"unpickling needs module {module_name!r}, not imported yet")
        return super().find_class(module_name, name)


def load_frames(frames: Sequence[FrameLike], loaded_only: bool = False) -> object:
    """The object in ``frames`` (see ``deserialize_object``): one small ``bytes`` frame, the
    usual result or call, is checked and unpickled at once; anything else, or a check that
    fails, goes the general way, which names what is wrong."""
    if type(frames) is list or type(frames) is tuple:
        if len(frames) == 1 and type(frames[0]) is bytes:
            whole: bytes = frames[0]  # a small object in one frame: most results and calls
            if (
                whole.startswith(HEADER)
                and len(whole) >= PICKLE_START
                and not (loaded_only and _MAY_IMPORT.search(whole, PICKLE_START) is not None)
            ):
                body = memoryview(whole)[PICKLE_START:]
                if zlib.crc32(body) == int.from_bytes(whole[len(HEADER) : PICKLE_START], "little"):
                    try:
                        return pickle.loads(body, buffers=())
                    except Exception as exc:
                        raise SerializationError(
                            f"cannot deserialize: {type(exc).__name__}: {exc}"
                        ) from exc
        # anything else, or a check that failed: the general way, which names the failure
    if isinstance(frames, bytes | bytearray | memoryview | zmq.Frame | str):
        raise SerializationError(
            f"expected a sequence of frames, got a single {type(frames).__name__}"
        )
    if not isinstance(frames, list | tuple):
        try:
            frames = list(frames)
        except TypeError as exc:
            raise SerializationError(
                f"expected a sequence of frames, got {type(frames).__name__}"
            ) from exc
    if len(frames) == 0:
        raise SerializationError("no frames to deserialize")
    if len(frames) == 1:  # a small result: no out-of-band buffers
        views = [_as_view(frames[0], 0)]
    else:
        views = [_as_view(frame, index) for index, frame in enumerate(frames)]
    head = views[0]
    if len(head) < len(HEADER) or head[: len(_MAGIC)].tobytes() != _MAGIC:
        raise SerializationError("first frame does not start with corral's serialization marker")
    if head[len(_MAGIC)] != FORMAT_VERSION:
        raise SerializationError(
            f"serialization format version {head[len(_MAGIC)]}; this corral reads "
            f"version {FORMAT_VERSION}"
        )
    if len(head) < PICKLE_START:
        raise SerializationError("first frame is truncated: no checksum")
    expected_crc = int.from_bytes(head[len(HEADER) : PICKLE_START], "little")
    if zlib.crc32(head[PICKLE_START:]) != expected_crc:
        raise SerializationError("checksum mismatch: the first frame is truncated or corrupted")

    buffers = iter(views[1:])
    try:
        if loaded_only and _MAY_IMPORT.search(head, PICKLE_START) is not None:
            stream = io.BytesIO(head[PICKLE_START:])
            obj = _LoadedOnlyUnpickler(stream, buffers=buffers).load()
        else:
            obj = pickle.loads(head[PICKLE_START:], buffers=buffers)
    except ImportNeeded:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot deserialize: {type(exc).__name__}: {exc}") from exc
    if len(views) > 1:
        unused = sum(1 for _ in buffers)
        if unused:
            raise SerializationError(
                f"{unused} of {len(views) - 1} buffer frames were not used by the pickle"
            )
    return obj


def load_templated_call(frames: Sequence[FrameLike]) -> tuple[Any, Any, Any] | None:
    """The call in ``frames`` if a client framed it from a kept function pickle: the function
    built from this thread's template, the arguments unpickled alone
    (:mod:`corral.protocol.functiontemplates`); None for any other call, and for one the
    template cannot read exactly as a whole unpickle would (then it is unpickled whole)."""
    if (type(frames) is not list and type(frames) is not tuple) or len(frames) != 1:
        return None  # a call with out-of-band buffers is never framed in two
    whole = frames[0]
    if type(whole) is not bytes:
        if not isinstance(whole, zmq.Frame) or len(whole) > _CALL_LIMIT:
            return None
        whole = bytes(frame_view(whole))  # a copy of a small frame: bytes slice faster
    end = functiontemplates.function_end(whole, PICKLE_START)
    if end is None or not whole.startswith(HEADER):
        return None
    # the checksum is checked there, from the one its template keeps for the function's part:
    # a mismatch gives None, and the general way names the failure
    crc = int.from_bytes(whole[len(HEADER) : PICKLE_START], "little")
    return functiontemplates.thread_templates().load_call(whole, PICKLE_START, end, crc)
