"""What an engine reports about itself once a second: its process's CPU and memory, and the
task it is running and for how long.

Published on iopub under the topic ``stats.<engine id>`` (docs/wire-flows.md), for the
dashboard: one small message per engine and second. Clients subscribe to ``engine.`` only, so
without a dashboard the iopub proxy's subscriptions keep the reports in the engines.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psutil

STATS_PERIOD = 1.0  # seconds between two reports
STATS_TOPIC = b"stats."


class StatsSampler:
    """Samples this process; remembers when the running task was first seen.

    The running task's duration is measured from the first sample that saw it, so it is
    exact to one period, which is all a live view needs and costs the task nothing.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self._running: str | None = None
        self._since = 0.0
        self._cpu_seconds = _cpu_seconds()
        self._cpu_at = time.monotonic()
        self._statm: int | None = None
        try:  # kept open: re-read in place, so that a sample opens no file
            self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # not Linux: psutil reads the resident size
            self._process = psutil.Process()

    def sample(self, running: str | None, now: float) -> dict[str, Any]:
        """The ``engine_stats`` content at monotonic time ``now``.

        Every engine samples itself once a second, idle or not, so a sample must cost next to
        nothing: with 64 engines on two cores, psutil's opening of /proc files for each one
        was most of what an idle cluster did. The CPU share comes from ``os.times`` (every
        thread of the process, like psutil's ``cpu_percent``: over 100 with several busy
        threads), the resident size from /proc/self/statm, read again through a kept
        descriptor."""
        if running != self._running:
            self._running, self._since = running, now
        cpu_seconds, cpu_at = _cpu_seconds(), time.monotonic()
        elapsed = cpu_at - self._cpu_at
        cpu = 100.0 * (cpu_seconds - self._cpu_seconds) / elapsed if elapsed > 0 else 0.0
        self._cpu_seconds, self._cpu_at = cpu_seconds, cpu_at
        memory = self._resident_bytes()
        return {
            "pid": self.pid,
            "hostname": self.hostname,
            "cpu": round(cpu, 1),
            "memory": int(memory),
            "running": running,
            "running_for": round(now - self._since, 1) if running else 0.0,
        }

    def _resident_bytes(self) -> int:
        if self._statm is None:
            return int(self._process.memory_info().rss)
        fields = os.pread(self._statm, 256, 0).split()
        return int(fields[1]) * _PAGE_SIZE

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class StatsSubscribers:
    """Whether anyone subscribes to the engines' reports, from the subscription messages an
    engine's iopub XPUB socket receives (the controller's iopub proxy passes them on: b"\\x01"
    + topic when a topic gets its first subscriber, b"\\x00" + topic when it loses its last).

    The reports cost an idle engine a wake-up a second; on two cores with 64 engines that was
    a tenth of the machine. They are sampled only while a subscription may match them: the
    dashboard's ``stats.``, ``b""`` (everything) from a client of an earlier corral, or one
    engine's ``stats.<id>`` (then every engine samples, and the XPUB sends only that one's).
    """

    def __init__(self) -> None:
        self._matching: set[bytes] = set()

    @property
    def wanted(self) -> bool:
        return bool(self._matching)

    def update(self, message: bytes) -> bool:
        """Take one subscription message; True if :attr:`wanted` changed. Anything else (not
        a subscription message, or another topic) changes nothing."""
        if not message or message[0] not in (0, 1):
            return False
        topic = message[1:]
        if not (STATS_TOPIC.startswith(topic) or topic.startswith(STATS_TOPIC)):
            return False
        before = self.wanted
        if message[0] == 1:
            self._matching.add(topic)
        else:
            self._matching.discard(topic)
        return self.wanted != before
