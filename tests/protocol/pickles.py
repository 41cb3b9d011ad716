"""Helpers shared by the tests of kept function pickles (functioncache, functiontemplates)."""

from __future__ import annotations

from typing import Any


def script(source: str) -> dict[str, Any]:
    """The globals of ``source`` run as a script (``__main__``): its functions travel by
    value, as a user's do (annotations evaluated, as without ``from __future__ import
    annotations``, which this module's own would otherwise pass on)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    code = compile(source, "<script>", "exec", dont_inherit=True)
    exec(code, namespace)  # noqa: S102 - test scripts
    return namespace


def unframed(pickled: bytes) -> bytes:
    """The opcodes of a protocol 5 pickle, framing taken out, ``STOP`` kept."""
    assert pickled[:2] == b"\x80\x05"
    parts, at = [], 2
    while at < len(pickled) and pickled[at] == 0x95:
        length = int.from_bytes(pickled[at + 1 : at + 9], "little")
        parts.append(pickled[at + 9 : at + 9 + length])
        at += 9 + length
    parts.append(pickled[at:])
    return b"".join(parts)
