"""What tasks print and display, shown to the user: live while they run, or grouped afterwards.

Engines publish every task's stdout/stderr on iopub as it is written (a ``stream`` message
only when something is printed, so a task that prints nothing costs nothing here), and
``display()``/rich results as ``display_data``/``execute_result``. The client's records keep
them per request; this module shows them:

- :class:`OutputStreamer` (``ar.stream_output()``, ``%%px --stream``) prints text as it arrives,
  each line prefixed ``[stdout:3]``. The reply's copy of the output is authoritative: whatever
  its iopub messages did not carry (they race the reply on another socket) is printed from it
  when the request finishes, so nothing is lost or printed twice.
- :func:`display_outputs` prints everything once the requests are done, grouped by engine,
  by type, or in order, in ipyparallel's format (``[stdout:0]``, ``Out[0:5]:``), and renders
  rich outputs through IPython's display machinery when running inside IPython or Jupyter.
"""

from __future__ import annotations

import base64
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from corral.client.records import Metadata, Records
from corral.protocol.session import Message

__all__ = ["GROUPINGS", "OutputStreamer", "display_outputs", "display_single_output"]

GROUPINGS = ("engine", "order", "type")
STREAMS = ("stdout", "stderr")


def _label(md: Metadata) -> str:
    engine_id = md["engine_id"]
    return "?" if engine_id is None else str(engine_id)


class OutputStreamer:
    """Prints the stdout/stderr of ``msg_ids`` as it arrives, until :meth:`stop`.

    Text goes to the ``sys.stdout``/``sys.stderr`` current at :meth:`start` (a Jupyter cell's
    output when started in one), written from the client's results thread. A line is prefixed with
    its stream and engine when it starts; a request's partial line is finished before another
    request's text is printed.
    """

    def __init__(self, records: Records, msg_ids: Sequence[str]) -> None:
        self.records = records
        self.msg_ids = list(msg_ids)
        self._lock = threading.Lock()
        self._printed: dict[tuple[str, str], int] = {}
        self._open_line: tuple[str, str] | None = None  # (msg_id, stream) mid-line
        self._files: dict[str, TextIO] = {}
        self._running = False

    def start(self) -> OutputStreamer:
        """Print what already arrived, then follow new output."""
        self._files = {"stdout": sys.stdout, "stderr": sys.stderr}
        with self._lock:
            self._running = True
        for msg_id in self.msg_ids:
            self.records.iopub_listeners[msg_id] = self._on_iopub
        for msg_id in self.msg_ids:
            future = self.records.futures.get(msg_id)
            self._catch_up(msg_id)
            if future is not None:
                future.add_done_callback(self._when_done(msg_id))
        return self

    def stop(self) -> None:
        """Print what the finished requests' replies hold and was not printed; stop following."""
        for msg_id in self.msg_ids:
            self.records.iopub_listeners.pop(msg_id, None)
            self._catch_up(msg_id)
        with self._lock:
            self._running = False
            self._end_line()

    def __enter__(self) -> OutputStreamer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _when_done(self, msg_id: str) -> Callable[[Any], None]:
        return lambda _future: self._catch_up(msg_id)

    def _on_iopub(self, msg: Message) -> None:
        """(Results thread) Records has appended this stream's text to the metadata already."""
        if msg.msg_type == "stream" and msg.parent_id is not None:
            self._catch_up(msg.parent_id)

    def _catch_up(self, msg_id: str) -> None:
        """Print whatever of ``msg_id``'s recorded output is not printed yet."""
        md = self.records.metadata.get(msg_id)
        if md is None or not (md["stdout"] or md["stderr"]):
            return  # the common case of a task that printed nothing: no lock taken
        with self._lock:
            if not self._running:
                return
            for name in STREAMS:
                text: str = md[name]
                done = self._printed.get((msg_id, name), 0)
                if len(text) > done:
                    self._printed[(msg_id, name)] = len(text)
                    self._write(msg_id, name, _label(md), text[done:])

    def _write(self, msg_id: str, name: str, label: str, text: str) -> None:
        """Write ``text`` prefixed at every line start. Locked."""
        key = (msg_id, name)
        if self._open_line is not None and self._open_line != key:
            self._end_line()
        prefix = f"[{name}:{label}] "
        out: list[str] = []
        at_line_start = self._open_line != key
        for line in text.splitlines(keepends=True):
            out.append(prefix + line if at_line_start else line)
            at_line_start = line.endswith("\n")
        self._open_line = None if at_line_start else key
        stream = self._files[name]
        stream.write("".join(out))
        stream.flush()

    def _end_line(self) -> None:
        """Finish a partial line before other text. Locked."""
        if self._open_line is not None:
            stream = self._files[self._open_line[1]]
            stream.write("\n")
            stream.flush()
            self._open_line = None


# ---------------------------------------------------------------------- afterwards


def _ipython_shell() -> Any:
    """The running IPython shell, or None (plain Python, or IPython not imported)."""
    module = sys.modules.get("IPython")
    return module.get_ipython() if module is not None else None


def _decoded(data: dict[str, Any]) -> dict[str, Any]:
    """A mime bundle with binary types (sent base64-encoded) as bytes, as IPython expects."""
    return {
        key: base64.b64decode(value)
        if key.startswith("image/") and key != "image/svg+xml" and isinstance(value, str)
        else value
        for key, value in data.items()
    }


def _print_stream(name: str, label: str, text: str) -> None:
    """``[stdout:0] text`` for one line; the prefix on its own line for several."""
    if not text:
        return
    file = sys.stdout if name == "stdout" else sys.stderr
    prefix = f"[{name}:{label}] "
    body = text if text.endswith("\n") else text + "\n"
    if "\n" in text.rstrip("\n"):
        file.write(prefix.rstrip() + "\n" + body)
    else:
        file.write(prefix + body)
    file.flush()


def _show_data(data: dict[str, Any], metadata: dict[str, Any], prompt: str = "") -> None:
    """Render one display_data/execute_result bundle: rich in IPython, text elsewhere."""
    shell = _ipython_shell()
    text = str(data.get("text/plain", ""))
    rich = [key for key in data if key != "text/plain"]
    if shell is None or not rich:
        if prompt:
            joiner = "\n" if "\n" in text else ""
            print(f"{prompt}{joiner}{text}")
        elif text:
            print(text)
        return
    import IPython.display

    if prompt:
        # on the prompt's line, as ipyparallel: a terminal shell prints the text form right
        # after it (Out[0:3]: <Math object>), a notebook shows the rich form below it
        print(prompt, end="", flush=True)
    publish: Any = IPython.display.publish_display_data
    publish(_decoded(data), metadata)


def _show_outputs(md: Metadata, index: int | None = None) -> None:
    """An engine's display() outputs (only the ``index``-th one if given), under a label."""
    outputs = [o for o in md["outputs"] if isinstance(o, dict) and isinstance(o.get("data"), dict)]
    if index is not None:
        outputs = outputs[index : index + 1]
    if outputs:
        print(f"[output:{_label(md)}]")
    for output in outputs:
        _show_data(output["data"], output.get("metadata") or {})


def _show_result(md: Metadata, count: Any) -> None:
    result = md["execute_result"]  # ipyparallel's bundle: {"data": ..., "metadata": ...}
    data = result.get("data") if isinstance(result, dict) else None
    if isinstance(data, dict) and data:
        number = f":{count}" if isinstance(count, int) else ""
        _show_data(data, result.get("metadata") or {}, f"Out[{_label(md)}{number}]: ")


def display_outputs(
    records: Records,
    msg_ids: Iterable[str],
    groupby: str = "type",
    result_only: bool = False,
) -> None:
    """Show the output of finished requests (see the module doc). ``groupby``: ``engine``
    (all of one engine's output together), ``type`` (all stdout, then stderr, displays,
    results) or ``order`` (like type, with the n-th display of every engine together).
    ``result_only`` skips stdout/stderr (they were streamed already)."""
    if groupby not in GROUPINGS:
        raise ValueError(f"groupby must be one of {', '.join(GROUPINGS)}, not {groupby!r}")
    mds = [records.metadata.get(m) or Metadata(msg_id=m) for m in msg_ids]
    counts = [_execution_count(records, md["msg_id"]) for md in mds]
    streams = () if result_only else STREAMS
    if groupby == "engine":
        for md, count in zip(mds, counts, strict=True):
            for name in streams:
                _print_stream(name, _label(md), md[name])
            _show_outputs(md)
            _show_result(md, count)
        return
    for name in streams:
        for md in mds:
            _print_stream(name, _label(md), md[name])
    if groupby == "type":
        for md in mds:
            _show_outputs(md)
    else:
        longest = max((len(md["outputs"]) for md in mds), default=0)
        for index in range(longest):
            for md in mds:
                _show_outputs(md, index)
    for md, count in zip(mds, counts, strict=True):
        _show_result(md, count)


def display_single_output(records: Records, msg_id: str, result_only: bool = False) -> None:
    """Show the output of one finished request of a single-engine call (``rc[3].execute``)
    as ipyparallel does: its stdout and stderr as printed and its displays, without engine
    labels, then its result as the reply shows itself (``Out[3:5]: ...``). ``result_only``
    skips stdout and stderr only (they were streamed already), as for several engines."""
    md = records.metadata.get(msg_id) or Metadata(msg_id=msg_id)
    for name in () if result_only else STREAMS:
        text = md[name]
        if text:
            file = sys.stdout if name == "stdout" else sys.stderr
            file.write(text)
            file.flush()
    for output in md["outputs"]:
        if isinstance(output, dict) and isinstance(output.get("data"), dict):
            _show_data(output["data"], output.get("metadata") or {})
    _show_result(md, _execution_count(records, msg_id))


def _execution_count(records: Records, msg_id: str) -> Any:
    future = records.futures.get(msg_id)
    if future is None or not future.done() or future.exception() is not None:
        return None
    value = future.result()
    return getattr(value, "execution_count", None)
