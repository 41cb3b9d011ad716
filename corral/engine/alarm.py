"""A wake-up at a deadline that costs no thread wake-up to set: Linux's timerfd.

The engine's main thread holds the replies of short tasks for a moment, so that several leave in
one bundle; before it starts a task with replies held, something must send them if that task
runs long (:mod:`corral.engine.task_shell`). Asking the I/O thread to set a timer costs a
hand-off per batch: the I/O thread wakes, takes the GIL from the main thread, and wakes again at
the deadline even when the batch ended long before. With 64 engines on two cores, where most
batches are one or two tasks, that was 80-100 us of CPU per task.

A timerfd is a kernel timer that makes a file descriptor readable at its deadline. The main
thread arms it (one system call, the GIL held) before a task starts with replies held, each
arming replacing the last deadline; the I/O thread polls the descriptor with its other sources
and acts only if a task is still running at the deadline (it wakes once at the end of a burst,
the last deadline being left armed: see :meth:`corral.engine.task_shell.TaskShell.flush`).
It needs no signal (so it cannot conflict with a user's ``alarm()``) and it fires while the main
thread is inside C code for hours.

Python 3.13 has ``os.timerfd_create``; on 3.11 and 3.12 the two calls go through ctypes, with
the GIL held (``PyDLL``): a call that releases the GIL hands it to the I/O thread and waits for
it back, which is the cost this module removes. Where neither exists (not Linux),
:func:`open_alarm` returns None and the caller keeps the hand-off.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from collections.abc import Callable

CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _ItimerSpec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class Alarm:
    """A one-shot kernel timer on :attr:`fd`: readable from its deadline until :meth:`clear`
    or :meth:`disarm`. Arming and disarming are safe from any thread (the kernel orders them);
    one reader (the I/O thread's loop) clears it."""

    def __init__(self, fd: int, settime: Callable[..., int] | None) -> None:
        self.fd = fd
        self._settime = settime  # libc's timerfd_settime (None: os.timerfd_settime_ns)
        self._spec = _ItimerSpec()
        self._spec_ref = ctypes.byref(self._spec)
        self._value = self._spec.it_value  # a view of the spec's field, read once (not per call)
        self.armed = False

    def arm(self, deadline: float) -> None:
        """Make :attr:`fd` readable at ``deadline`` (a :func:`time.monotonic` value), replacing
        any earlier deadline."""
        nanoseconds = max(1, int(deadline * 1e9))  # 0 would disarm
        self._set(nanoseconds, TFD_TIMER_ABSTIME)
        self.armed = True

    def disarm(self) -> None:
        """Cancel the deadline; also makes a fired, unread timer unreadable again."""
        if self.armed:
            self.armed = False
            self._set(0, 0)

    def clear(self) -> bool:
        """(The reader.) Consume an expiry; False if there was none (disarmed meanwhile)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)

    def _set(self, nanoseconds: int, flags: int) -> None:
        if self._settime is None:  # Python 3.13+
            os.timerfd_settime_ns(self.fd, flags=flags, initial=nanoseconds)  # type: ignore[attr-defined,unused-ignore]
            return
        value = self._value
        value.tv_sec, value.tv_nsec = divmod(nanoseconds, 1_000_000_000)
        if self._settime(self.fd, flags, self._spec_ref, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"timerfd_settime: {os.strerror(code)}")


def open_alarm() -> Alarm | None:
    """A new :class:`Alarm`, or None where the platform has no timerfd (or refuses one)."""
    if not sys.platform.startswith("linux"):
        return None
    if hasattr(os, "timerfd_create"):  # Python 3.13+
        flags = TFD_NONBLOCK | TFD_CLOEXEC
        fd: int = os.timerfd_create(time.CLOCK_MONOTONIC, flags=flags)  # type: ignore[attr-defined,unused-ignore]
        return Alarm(fd, None)
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held during calls
        create = libc.timerfd_create
        settime = libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = (ctypes.c_int, ctypes.c_int)
    create.restype = ctypes.c_int
    # no argtypes for settime: Alarm._set alone calls it, with two ints, a byref of its spec
    # and None, which ctypes passes as they are; checking them costs a third of each call
    settime.restype = ctypes.c_int
    fd = create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSYS, errno.EPERM):
            return None
        raise OSError(code, f"timerfd_create: {os.strerror(code)}")
    return Alarm(fd, settime)
