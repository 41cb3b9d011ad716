"""Progress bars for the long waits: results, engines starting, the CLI.

tqdm draws them: a text bar redrawn in place on a terminal (and in a notebook's output when
ipywidgets is missing), the widget bar in Jupyter when ipywidgets is installed. Each bar shows
done/total, the rate and the time left. Ctrl-C while waiting closes the bar cleanly and raises
KeyboardInterrupt to the caller; the tasks themselves go on (``ar.abort()`` stops them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, TextIO

from corral.errors import TimeoutError

if TYPE_CHECKING:
    from corral.client.client import Client

__all__ = ["in_notebook", "progress_bar", "wait_for_engines", "wait_for_futures"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (not a terminal IPython or plain Python)."""
    shell_module = sys.modules.get("IPython")
    if shell_module is None:
        return False
    shell = shell_module.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(
    total: int,
    desc: str,
    unit: str,
    *,
    widget: bool | None = None,
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar: the widget in a Jupyter kernel with ipywidgets (``widget=None``: choose),
    else the text bar, on ``file`` (default stderr)."""
    if widget is None:
        widget = in_notebook()
    if widget:
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm as notebook_tqdm
        except ImportError:
            pass
        else:
            return notebook_tqdm(total=total, desc=desc, unit=unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True)


def _wait_loop(
    bar: Any,
    count: Callable[[], int],
    wait_step: Callable[[float], bool],
    total: int,
    interval: float,
    timeout: float | None,
) -> bool:
    """Advance ``bar`` to ``count()`` every ``interval`` until ``wait_step`` reports done or
    ``timeout`` passes; True if done. Closes the bar whatever happens."""
    deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
    done = False
    try:  # from the first update on: a Ctrl-C at any point still ends the bar's line
        first = min(count(), total)
        if first != bar.n:
            bar.update(first - bar.n)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            step = interval if left is None else max(0.0, min(interval, left))
            done = wait_step(step)
            current = total if done else min(count(), total)
            if current != bar.n:
                bar.update(current - bar.n)
            if done or (left is not None and left <= step):
                return done
    finally:
        bar.close()


def wait_for_futures(
    pending: Sequence[futures.Future[Any]],
    *,
    interval: float = 0.1,
    timeout: float | None = None,
    desc: str = "tasks",
    unit: str = "tasks",
    widget: bool | None = None,
    file: TextIO | None = None,
    return_when: str = futures.ALL_COMPLETED,
) -> bool:
    """Wait for ``pending`` with a bar of how many are done; True if ``return_when`` (as for
    :func:`concurrent.futures.wait`: all done, the first done, the first failed) came true
    within ``timeout`` seconds (None or negative: no limit)."""
    items = list(pending)

    def count() -> int:
        return sum(1 for item in items if item.done())

    def step(seconds: float) -> bool:
        done, not_done = futures.wait(items, seconds, return_when=return_when)
        if not not_done or (return_when == futures.FIRST_COMPLETED and done):
            return True
        failed = (item for item in done if not item.cancelled() and item.exception(0))
        return return_when == futures.FIRST_EXCEPTION and any(failed)

    bar = progress_bar(len(items), desc, unit, widget=widget, file=file)
    return _wait_loop(bar, count, step, len(items), interval, timeout)


def wait_for_engines(
    client: Client,
    n: int,
    *,
    timeout: float | None = None,
    interval: float = 0.1,
    widget: bool | None = None,
    file: TextIO | None = None,
) -> None:
    """``client.wait_for_engines(n, timeout)`` with a bar of the engines registered so far."""

    def step(seconds: float) -> bool:
        try:
            client.wait_for_engines(n, timeout=seconds)
        except TimeoutError:
            return False
        return True

    bar = progress_bar(n, "engines", "engines", widget=widget, file=file)
    if not _wait_loop(bar, lambda: len(client), step, n, interval, timeout):
        raise TimeoutError(f"{len(client)} of {n} engines registered after {timeout} s")
