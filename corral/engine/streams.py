"""The text streams that stand in for ``sys.stdout`` and ``sys.stderr`` while a task runs.

Apart from :mod:`corral.engine.capture`, which is compiled (``make native``): a stream
subclasses ``io.TextIOBase``, a C type, which a compiled class may not, and its ``write`` is
what user code calls, so its errors are the ones a real text stream gives.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .capture import OutputCapture


class CapturedStream(io.TextIOBase):
    """A text stream standing in for sys.stdout or sys.stderr during a task."""

    def __init__(self, capture: OutputCapture, name: str) -> None:
        super().__init__()
        self._capture = capture
        self._name = name

    @property
    def name(self) -> str:
        return f"<corral {self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: object) -> int:
        """Capture ``text``; anything else than a str is refused as a real text stream refuses
        it (typed ``object``: user code may pass anything, and the check is this method's)."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._capture.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        self._capture.request_flush()
