"""Objects <-> one small pickle frame plus zero-copy buffers; apply requests packed the same way.

Wire format of one serialized object, as a list of frames::

    frame 0     b"CRL" + version byte + CRC-32 of the pickle (4 bytes, little-endian) + pickle
    frame 1..n  out-of-band buffers, in the order the pickle refers to them

The pickle is cloudpickle's, protocol 5, so functions, lambdas, closures and classes defined in
``__main__`` travel by value. Large data does not go through the pickle: it becomes frames that
are memoryview objects onto the sender's memory (no copy). That holds for every contiguous numpy
array and ``memoryview`` of at least ``buffer_threshold`` bytes, at any depth in the object, and
for ``bytes`` and ``bytearray`` of that size when they are the object itself or an argument of
an apply (deeper, they are copied into the pickle: see :class:`_LargeBytes` for why). Smaller
buffers stay in the pickle, where copying them costs less than a frame.

What the receiver gets back:

- numpy arrays are always writable. Built from a writable frame (a received ``zmq.Frame``, a
  ``bytearray``) they use its memory without a copy; built from read-only memory (``bytes``, or
  an array that was read-only on the sender) they are copied once on receipt.
- ``memoryview`` comes back as a memoryview, with its format and shape, onto the received frame
  (or, below the threshold, onto its own copy from the pickle).
- ``bytes`` and ``bytearray`` keep their type, which costs one copy on receipt (neither type can
  point at memory it does not own).

The one copy on the send side: an array that is neither C- nor F-contiguous (``a[::2]``,
``a[:, ::3].T``), or a memoryview that is not C-contiguous, is copied once so that it fits in one
frame.

The CRC lets a corrupted or foreign first frame fail cleanly before the unpickler reads it (a
random pickle can import modules, call functions or allocate gigabytes). Buffer frames are not
checksummed, which would cost a pass over all the data; their lengths are checked against the
pickle. None of this defends against an attacker: unpickling runs code, so frames must come
from a peer that holds the session key.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import warnings
import weakref
import zlib
from collections.abc import Callable, Sequence
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final

import cloudpickle  # type: ignore[import-untyped]

from corral.errors import SerializationError
from corral.protocol import functioncache
from corral.protocol.functioncache import CallEntry
from corral.protocol.references import Reference, is_interactive
from corral.protocol.unpickling import (
    CRC_SIZE,
    FORMAT_VERSION,
    HEADER,
    PICKLE_START,
    FrameLike,
    load_frames,
    load_templated_call,
)

if TYPE_CHECKING:
    import numpy

__all__ = [
    "FORMAT_VERSION",
    "deserialize_object",
    "pack_apply_message",
    "serialize_object",
    "unpack_apply_message",
]

_PICKLE_PREFIX: Final = b"\x80\x05\x95"  # PROTO 5, FRAME (its 8-byte length follows)
_FRAME_OPCODE: Final = b"\x95"
_PROTOCOL: Final = 5
_CALL_TAIL: Final = b"\x87\x94."  # TUPLE3 MEMOIZE STOP: closes the pickle of (f, args, kwargs)
_CALLS_KEPT: Final = 32  # functions per thread whose pickle is kept for reuse


# ---------------------------------------------------------------- rebuilders
#
# The pickle names these functions, so renaming one changes the wire format: bump
# FORMAT_VERSION when you do.


def _rebuild_array(
    buffer: Any, dtype: numpy.dtype[Any], shape: tuple[int, ...], order: str
) -> numpy.ndarray[Any, Any]:
    """An array over ``buffer``'s memory; a copy only if that memory is read-only."""
    import numpy

    if memoryview(buffer).readonly:
        buffer = bytearray(buffer)
    flat = numpy.frombuffer(buffer, dtype=numpy.uint8)
    return flat.view(dtype).reshape(shape, order=order)  # type: ignore[call-overload,no-any-return]


def _rebuild_bytes(buffer: Any, kind: str, size: int) -> bytes | bytearray:
    """A bytes or bytearray copy of ``buffer``: neither type can use memory it does not own."""
    rebuilt = bytearray(buffer) if kind == "bytearray" else bytes(buffer)
    if len(rebuilt) != size:
        raise ValueError(f"expected {size} bytes for a {kind}, got {len(rebuilt)}")
    return rebuilt


def _rebuild_memoryview(buffer: Any, format: str, shape: tuple[int, ...]) -> memoryview:
    """A memoryview over ``buffer``'s memory with the sender's format and shape."""
    view = _cast(memoryview(buffer), format, shape)
    if view.shape != shape:
        raise ValueError(f"a memoryview of shape {shape} arrived with shape {view.shape}")
    return view


def _cast(view: memoryview, format: str, shape: tuple[int, ...]) -> memoryview:
    flat: Any = view.cast("B")  # typed as Any: typeshed only accepts a literal format
    if len(shape) == 1:
        result: memoryview = flat.cast(format)  # unlike cast(format, [0]), works when empty
    else:
        result = flat.cast(format, shape)
    return result


# ---------------------------------------------------------------- pickling


class _LargeBytes:
    """Stands in for a bytes or bytearray that should travel as its own frame.

    The C pickler writes exact bytes and bytearray itself, without asking reducer_override;
    the only hook that would see them (persistent_id) is called for every object and made
    pickling lists of numbers 4-7 times slower. So :func:`serialize_object` and
    :func:`pack_apply_message` put this wrapper where they can see such data for free: in place
    of the object itself and of each argument. (A bytearray passed as an argument and also held
    inside another argument therefore arrives as two equal bytearrays, not one.)
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data


def _wrap_large_bytes(obj: Any, buffer_threshold: int, wrapped: dict[int, _LargeBytes]) -> Any:
    """``obj``, or a :class:`_LargeBytes` for it; one wrapper per object, so identity survives."""
    if (type(obj) is bytes or type(obj) is bytearray) and len(obj) >= buffer_threshold:
        if id(obj) not in wrapped:
            wrapped[id(obj)] = _LargeBytes(obj)
        return wrapped[id(obj)]
    return obj


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, sending large buffers out of band and collecting them.

    Used through :meth:`dump_frames`, one per thread (:func:`_thread_pickler`), reused for
    every object that thread serializes: building a pickler (the C pickler, cloudpickle's and
    our state, a stream) was a fifth of the CPU of packing a no-op apply request (about 30 us
    -> 24 us per ``pack_apply_message``, thread CPU time). Reuse keeps nothing between dumps:
    the memo, cloudpickle's ``globals_ref``, the buffers and the output stream are cleared
    after each one, so every dump is the pickle a fresh pickler would write.

    On CPython before 3.12.7 the collector crashes when it clears a memoryview together with a
    PickleBuffer exported from it (python/cpython#77894), so no PickleBuffer outlives the dump
    and the frame for a memoryview is a cast of it (sharing its buffer), not the PickleBuffer's
    raw view.
    """

    def __init__(self) -> None:
        self._stream = io.BytesIO()
        super().__init__(self._stream, protocol=_PROTOCOL, buffer_callback=self._take_buffer)
        self._buffer_threshold = 0
        self._buffers: list[memoryview] = []
        self._memoryviews: dict[int, tuple[pickle.PickleBuffer, memoryview]] = {}
        self._ndarray: type | None = None
        self.busy = False
        self._calls: dict[int, CallEntry] = {}  # by id(function): see dump_call_frames
        self.kept = 0  # function pickles kept (for tests)
        self.reused = 0  # call pickles made from a kept function pickle (for tests)
        # (see _dump_lenient) interactive functions leave out the captured globals that
        # cannot be pickled; (function, name, error) of each left out
        self.lenient = False
        self.dropped: list[tuple[str, str, str]] = []
        self._checking: set[int] = set()  # ids of the functions whose globals are being tried

    def dump_frames(self, obj: object, buffer_threshold: int) -> list[bytes | memoryview]:
        """``obj`` as frame 0 (marker, version, CRC, pickle) and its out-of-band buffers."""
        stream = self._stream
        self._buffer_threshold = buffer_threshold
        self._ndarray = getattr(sys.modules.get("numpy"), "ndarray", None)
        self.busy = True
        try:
            stream.write(bytes(PICKLE_START))
            self.dump(obj)
            with stream.getbuffer() as whole:
                crc = zlib.crc32(whole[PICKLE_START:])
                whole[:PICKLE_START] = HEADER + crc.to_bytes(CRC_SIZE, "little")
            return [stream.getvalue(), *self._buffers]
        finally:
            self._reset()  # truncating also gives back the memory of a large pickle

    def dump_call_frames(
        self, f: Callable[..., Any], args: object, kwargs: object, buffer_threshold: int
    ) -> list[bytes | memoryview]:
        """The frames of :meth:`dump_frames` for ``(f, args, kwargs)``, reusing the pickle of
        ``f`` when :mod:`corral.protocol.functioncache` says it cannot have changed: the same
        bytes, without cloudpickle writing the function again.

        A by-value function is noted (weakly) at its first call and fingerprinted at its
        second; once two calls in a row find the same fingerprint of deeply immutable
        objects, its pickle is kept. So a lambda made for one call costs a dict entry; a
        function reading mutable objects, or whose globals change at every call, never costs
        a pickle more, and is looked at ever more rarely (see ``CallEntry.skip``)."""
        if type(f) is not FunctionType:
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        calls = self._calls
        entry = calls.get(id(f))
        if entry is None or entry.function() is not f:  # new (or a dead one's id)
            if functioncache.by_value(f):
                self._keep(CallEntry(weakref.ref(f)))
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if entry.skip:
            entry.skip -= 1
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if not functioncache.small_arguments(args, kwargs):
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        print_ = functioncache.fingerprint(f)
        if print_ is None:
            del calls[id(f)]
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if entry.fingerprint is None or not functioncache.same(entry.fingerprint, print_):
            # first look, or it changed: a candidate if reusable, else looked at less often;
            # a candidate that changed before it was kept counts as a miss, a kept one not
            if functioncache.reusable(print_):
                churned = entry.fingerprint is not None and entry.ops is None
                misses = entry.misses + 1 if churned else 0
                self._keep(CallEntry(entry.function, print_, misses=misses))
            else:
                self._keep(CallEntry(entry.function, misses=entry.misses + 1))
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if entry.ops is None and not self._remember(f, entry):
            self._keep(CallEntry(entry.function, misses=entry.misses + 1))
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if not args and not kwargs and entry.bare is not None:
            self.reused += 1  # a call without arguments: the same bytes every time
            return [entry.bare]
        frames = self._dump_after(entry, args, kwargs, buffer_threshold)
        if frames is None:
            return self.dump_frames((f, args, kwargs), buffer_threshold)
        if not args and not kwargs and len(frames) == 1 and type(frames[0]) is bytes:
            entry.bare = frames[0]
        self.reused += 1
        return frames

    def _keep(self, entry: CallEntry) -> None:
        function = entry.function()
        if function is None:
            return
        calls = self._calls
        key = id(function)
        if key not in calls and len(calls) >= _CALLS_KEPT:
            del calls[next(iter(calls))]  # the oldest noted
        calls[key] = entry

    def _remember(self, f: FunctionType, entry: CallEntry) -> bool:
        """Keep the pickle of ``f`` in ``entry`` (a candidate whose fingerprint the call
        found again): its opcodes and the memo after them. False if it is not one frame
        without out-of-band buffers (then it is not reusable)."""
        self.busy = True
        stream = self._stream
        try:
            self._buffer_threshold = 0  # any out-of-band buffer: not reusable
            self._ndarray = getattr(sys.modules.get("numpy"), "ndarray", None)
            self.dump(f)
            body = functioncache.frame_body(memoryview(stream.getvalue()))
            if body is None or self._buffers:
                return False
            again = functioncache.fingerprint(f)  # another thread may have changed a global
            if again is None or not functioncache.same(entry.fingerprint, again):  # type: ignore[arg-type]
                return False
            entry.ops = bytes(body)
            length = len(body).to_bytes(8, "little")
            entry.opening = b"".join((_PICKLE_PREFIX, length, body, _FRAME_OPCODE))
            entry.memo = self.memo.copy()
            self.kept += 1
            return True
        finally:
            self._reset()

    def _dump_after(
        self, entry: CallEntry, args: object, kwargs: object, buffer_threshold: int
    ) -> list[bytes | memoryview] | None:
        """The call pickle from ``entry``'s opcodes, then ``args`` and ``kwargs`` pickled with
        the memo the function left, so that they refer to its objects as in one pickle; framed
        in two, the function's opcodes alone in the first frame, for the engine's templates
        (docs/wire-flows.md, "apply_request"). None when the whole would not fit one frame
        (then pickle it afresh)."""
        assert entry.ops is not None and entry.opening is not None and entry.memo is not None
        stream = self._stream
        self._buffer_threshold = buffer_threshold
        self._ndarray = getattr(sys.modules.get("numpy"), "ndarray", None)
        self.busy = True
        try:
            self.memo = entry.memo
            self.dump(args)
            middle = stream.tell()
            self.dump(kwargs)
            whole = memoryview(stream.getvalue())  # a copy: the stream is truncated after
            first = functioncache.frame_body(whole[:middle])
            second = functioncache.frame_body(whole[middle:])
            if first is None or second is None:
                return None
            size = len(first) + len(second) + len(_CALL_TAIL)
            if len(entry.ops) + size >= functioncache.FRAME_LIMIT:
                return None
            opening, length = entry.opening, size.to_bytes(8, "little")
            pickled = b"".join((opening, length, first, second, _CALL_TAIL))
            crc = zlib.crc32(pickled)
            return [HEADER + crc.to_bytes(CRC_SIZE, "little") + pickled, *self._buffers]
        finally:
            self._reset()

    def _reset(self) -> None:
        """Forget everything of the last dump (memo, globals_ref, buffers, output)."""
        self.clear_memo()
        self.globals_ref.clear()
        self._buffers = []
        self._memoryviews.clear()
        self._stream.seek(0)
        self._stream.truncate()
        self.busy = False

    def _take_buffer(self, buffer: pickle.PickleBuffer) -> bool:
        """pickle's buffer_callback: True keeps the buffer in the pickle."""
        source = self._memoryviews.get(id(buffer))
        view = source[1].cast("B") if source is not None else buffer.raw()
        if view.nbytes < self._buffer_threshold:
            return True
        self._buffers.append(view)
        return False

    def reducer_override(self, obj: object) -> object:
        kind = type(obj)
        if kind is self._ndarray:
            reduced = _reduce_array(obj)
            if reduced is not NotImplemented:
                return reduced
        elif kind is memoryview:
            return self._reduce_memoryview(obj)  # type: ignore[arg-type]
        elif kind is _LargeBytes:
            data = obj.data  # type: ignore[attr-defined]
            return _rebuild_bytes, (pickle.PickleBuffer(data), type(data).__name__, len(data))
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: FunctionType) -> object:
        """cloudpickle's reduction of a function sent by value; when :attr:`lenient`, an
        interactive function's captured globals that cannot be pickled are left out."""
        if not self.lenient or not is_interactive(func):
            return super()._dynamic_function_reduce(func)
        if id(func) in self._checking:  # a trial reaching a function whose globals are
            return _placeholder, ()  # being tried (a recursive one): tried there
        reduced = super()._dynamic_function_reduce(func)
        state, slotstate = reduced[2]
        kept: dict[str, Any] = {}
        self._checking.add(id(func))
        try:
            for name, value in slotstate["__globals__"].items():
                # tried leniently too: a helper function it reads keeps its own picklable
                # globals and leaves out the others when it is pickled
                trial = _Pickler()
                trial.lenient = True
                trial._checking = self._checking
                try:
                    trial.dump_frames(value, sys.maxsize)
                except Exception as exc:  # any failure: a lock, a socket, a generator
                    error = f"{type(exc).__name__}: {exc}"
                    self.dropped.append((func.__qualname__, name, error))
                else:
                    kept[name] = value
        finally:
            self._checking.discard(id(func))
        return (*reduced[:2], (state, {**slotstate, "__globals__": kept}), *reduced[3:])

    def _reduce_memoryview(self, view: memoryview) -> object:
        """Reduce a memoryview to its bytes (copied if not C-contiguous), format and shape."""
        data = view if view.c_contiguous else memoryview(view.tobytes())
        shape = view.shape or ()
        try:
            _cast(data, view.format, shape)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot serialize a memoryview of format {view.format!r} and shape {shape}: "
                f"{exc}; send bytes or a numpy array instead"
            ) from exc
        buffer = pickle.PickleBuffer(data)
        self._memoryviews[id(buffer)] = (buffer, data)
        return _rebuild_memoryview, (buffer, view.format, shape)


def _placeholder() -> None:
    """What a trial pickle (:meth:`_Pickler._dynamic_function_reduce`) writes for a function
    whose globals are being tried; never sent."""


def _reduce_array(array: Any) -> object:
    """Reduce a plain ndarray to one flat byte buffer, which pickle may send out of band."""
    dtype = array.dtype
    if dtype.hasobject or dtype.itemsize == 0:
        return NotImplemented  # numpy's own pickling (in-band) handles these
    if array.flags.c_contiguous:
        order = "C"
    elif array.flags.f_contiguous:
        order = "F"
    else:
        import numpy

        array = numpy.ascontiguousarray(array)  # the one copy: the data must be one frame
        order = "C"
    flat = array.ravel(order="K").view("u1")  # a view: datetimes and records export as bytes
    return _rebuild_array, (pickle.PickleBuffer(flat), dtype, array.shape, order)


_local = threading.local()


def _thread_pickler() -> _Pickler:
    """This thread's pickler; a fresh one when it is busy (a reducer that serializes)."""
    pickler: _Pickler | None = getattr(_local, "pickler", None)
    if pickler is None:
        pickler = _local.pickler = _Pickler()
    return _Pickler() if pickler.busy else pickler


def _dump_lenient(obj: object, buffer_threshold: int) -> list[bytes | memoryview] | None:
    """``obj``'s frames with the client's globals that interactive functions in it read but
    that cannot be pickled left out (with a warning naming them), or None if it still fails.

    Tried only once the ordinary pickle failed. An interactive function runs with the
    engine's namespace as its globals (corral.protocol.references.bind_function), so such a
    name is found there: ``@interactive def f(): return x`` after ``dview['x'] = 11`` runs
    although the client's own ``x`` is, say, an AsyncResult holding a lock (ipyparallel,
    which never sends a function's globals, runs it too). A name the engine lacks then
    raises NameError there."""
    pickler = _Pickler()
    pickler.lenient = True
    try:
        frames = pickler.dump_frames(obj, buffer_threshold)
    except Exception:
        return None
    for function, name, error in pickler.dropped:
        warnings.warn(
            f"{function} reads the global {name!r}, whose value here cannot be pickled "
            f"({error}): sent without it, so the engine's {name!r} is used",
            RuntimeWarning,
            stacklevel=4,
        )
    return frames


def _dump(obj: object, buffer_threshold: int, what: str = "") -> list[bytes | memoryview]:
    try:
        return _thread_pickler().dump_frames(obj, buffer_threshold)
    except SerializationError:
        raise
    except Exception as exc:
        frames = _dump_lenient(obj, buffer_threshold)
        if frames is not None:
            return frames
        raise SerializationError(
            f"cannot serialize {what or f'{type(obj).__name__} object'}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------- public API


def serialize_object(obj: object, buffer_threshold: int = 1024) -> list[bytes | memoryview]:
    """Frames for ``obj``: the pickle first, then its large buffers as zero-copy memoryviews.

    The memoryviews keep the sender's objects alive; mutating those objects before the frames
    are sent changes what is sent. Raises SerializationError if ``obj`` (or anything it holds,
    such as a lock, generator or socket) cannot be pickled; the message names the type.
    """
    kind = type(obj)
    if kind in _SMALL_ATOMS or (kind in _SIZED_ATOMS and len(obj) < buffer_threshold):  # type: ignore[arg-type]
        # the pickle the C pickler writes for them (reducer_override is never asked about
        # these types): the same bytes, without the reusable pickler's set-up and reset, for
        # the result of nearly every small task
        pickled = pickle.dumps(obj, _PROTOCOL)
        return [HEADER + zlib.crc32(pickled).to_bytes(CRC_SIZE, "little") + pickled]
    return _dump(_wrap_large_bytes(obj, buffer_threshold, {}), buffer_threshold)


_SMALL_ATOMS: Final = frozenset({type(None), bool, int, float, complex})
_SIZED_ATOMS: Final = frozenset({str, bytes})


def deserialize_object(buffers: Sequence[FrameLike], *, loaded_only: bool = False) -> object:
    """The object that :func:`serialize_object` turned into ``buffers``.

    Accepts ``bytes``, ``bytearray``, ``memoryview`` or ``zmq.Frame`` for each frame. Arrays and
    memoryviews in the result point into the frames' memory, which they keep alive. Anything
    that is not a complete, intact serialization (foreign or corrupted first frame, too few or
    too many buffers, an object that cannot be rebuilt here) raises SerializationError.

    ``loaded_only``: raise :class:`~corral.errors.ImportNeeded` instead of importing a module
    the pickle names (an import can take seconds: the client's I/O thread must not wait for
    one, see corral.client.requestfuture); the caller then deserializes again elsewhere.
    """
    return load_frames(buffers, loaded_only)


def pack_apply_message(
    f: Callable[..., Any],
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    buffer_threshold: int = 1024,
) -> list[bytes | memoryview]:
    """Frames for the call ``f(*args, **kwargs)``: one pickle holding all three, then buffers.

    One pickle (rather than one per argument) keeps objects shared between arguments shared on
    the engine. Raises TypeError for a call that could never be made, before pickling anything.
    """
    if not callable(f) and not isinstance(f, Reference):
        raise TypeError(f"apply needs a callable or a Reference, got {type(f).__name__}")
    if not isinstance(args, tuple | list):
        raise TypeError(f"apply args must be a tuple or list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise TypeError(f"apply kwargs must be a dict, got {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"apply kwargs keys must be str, got {key!r}")
    wrapped: dict[int, _LargeBytes] = {}
    args = tuple(_wrap_large_bytes(arg, buffer_threshold, wrapped) for arg in args) if args else ()
    kwargs = (
        {key: _wrap_large_bytes(value, buffer_threshold, wrapped) for key, value in kwargs.items()}
        if kwargs
        else {}
    )
    try:
        return _thread_pickler().dump_call_frames(f, args, kwargs, buffer_threshold)
    except SerializationError:
        raise
    except Exception as exc:
        frames = _dump_lenient((f, args, kwargs), buffer_threshold)
        if frames is not None:
            return frames
        name = getattr(f, "__qualname__", None) or type(f).__name__
        raise SerializationError(
            f"cannot serialize the call {name}(...): {type(exc).__name__}: {exc}"
        ) from exc


def unpack_apply_message(
    buffers: Sequence[FrameLike],
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``(f, args, kwargs)`` from the frames of :func:`pack_apply_message`.

    Raises SerializationError if the frames are not an intact apply message.
    """
    obj: object = load_templated_call(buffers)
    if obj is None:
        obj = load_frames(buffers)
    if not (isinstance(obj, tuple) and len(obj) == 3):
        raise SerializationError(
            f"not an apply message: expected (f, args, kwargs), got {type(obj).__name__}"
        )
    f, args, kwargs = obj
    if not callable(f) and not isinstance(f, Reference):
        raise SerializationError(f"not an apply message: {type(f).__name__} is not callable")
    if not isinstance(args, tuple):
        raise SerializationError(f"not an apply message: args is a {type(args).__name__}")
    if not (isinstance(kwargs, dict) and (not kwargs or all(isinstance(k, str) for k in kwargs))):
        raise SerializationError("not an apply message: kwargs is not a dict with str keys")
    return f, args, kwargs
