"""``publish_data``: a task on an engine sends values to its AsyncResult while it runs.

ipyparallel's ``ipyparallel.datapub.publish_data`` (here also importable as
``corral.datapub.publish_data``). Each call sends one ``data_message`` on iopub, parent the
running task, content ``{"keys": [...]}``, the dict serialized in its buffers. The client
merges the dicts into the task's ``data`` metadata (``ar.data``: a dict, one per request for a
multi-engine call), so a later value of a key replaces an earlier one. The task's reply says
how many it sent (metadata ``data_messages``), so ``ar.wait_for_output()`` waits for them all.

The call has no handle to its engine: the engine's TaskRunner installs itself here once
(:func:`install`), as IPython's kernel is found through its singleton.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["install", "publish_data"]

DataSink = Callable[[dict[str, Any]], None]

_sinks: list[DataSink] = []  # the engine's runner, once installed: at most one per process


def install(sink: DataSink) -> None:
    """Make ``sink`` (the engine's TaskRunner.publish_data) receive every call."""
    _sinks[:] = [sink]


def publish_data(data: Mapping[str, Any]) -> None:
    """Send ``data`` (a dict of picklable values, keys str) to the running task's AsyncResult,
    whose ``data`` is updated with it. Only in a task on an engine: RuntimeError elsewhere."""
    if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
        raise TypeError(f"publish_data takes a dict with str keys, not {type(data).__name__}")
    if not _sinks:
        raise RuntimeError(
            "publish_data() sends data from a task running on a corral engine; this process "
            "is not one"
        )
    _sinks[0](dict(data))
