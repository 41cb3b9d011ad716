"""The one copy the same-host fast path makes: a buffer into its segment's mapping.

Split from :mod:`corral.sharedmem` (the files, names and mappings) because it is about speed
only: one core's memory copy is well below what the memory bus carries, so a large buffer is
copied by several threads at once where that is possible without the GIL.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Any, Final

__all__ = ["COPY_CHUNK_BYTES", "MAX_COPY_THREADS", "PARALLEL_COPY_BYTES", "copy_into"]

PARALLEL_COPY_BYTES: Final = 16 << 20  # a copy this large is split between threads
COPY_CHUNK_BYTES: Final = 8 << 20  # at least this much per thread
MAX_COPY_THREADS: Final = 4


def copy_into(mapping: mmap.mmap, data: memoryview) -> None:
    """Copy ``data`` (bytes, format "B") to the start of ``mapping``: the one copy the fast path
    makes. A large buffer is split between up to :data:`MAX_COPY_THREADS` threads, one per core,
    when numpy is there to copy without the GIL (one core's memory copy is well below what the
    memory bus carries); otherwise, and for smaller buffers, one plain copy."""
    size = data.nbytes
    threads = min(MAX_COPY_THREADS, os.cpu_count() or 1, size // COPY_CHUNK_BYTES)
    numpy = sys.modules.get("numpy")  # only if the process uses numpy already: no import cost
    if size < PARALLEL_COPY_BYTES or threads < 2 or numpy is None:
        mapping[:size] = data
        return
    parts = [
        (
            numpy.frombuffer(
                mapping, dtype=numpy.uint8, count=min(step, size - start), offset=start
            ),
            numpy.frombuffer(data[start : start + step], dtype=numpy.uint8),
        )
        for step in [-(-size // threads)]
        for start in range(0, size, step)
    ]
    failures: list[BaseException] = []

    def copy_part(target: Any, source: Any) -> None:
        try:
            numpy.copyto(target, source)
        except BaseException as err:  # reported to the caller below, never lost
            failures.append(err)

    helpers = [
        threading.Thread(target=copy_part, args=part, name="corral-shm-copy", daemon=True)
        for part in parts[1:]
    ]
    for helper in helpers:
        helper.start()
    try:
        copy_part(*parts[0])
    finally:
        for helper in helpers:
            helper.join()
        helpers.clear()
        parts.clear()  # the mapping must keep no exported buffer: it is closed later
    if failures:
        raise failures[0]
