"""What an engine reports about itself once a second: its process's CPU and memory, and the
task it is running and for how long.

Published on iopub under the topic ``stats.<engine id>`` (docs/wire-flows.md), for the
dashboard. Clients, which subscribe to all of iopub, drop them as output of no request of
theirs: one small message per engine and second.
"""

from __future__ import annotations

import os
import socket
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
        self.process = psutil.Process()
        self.process.cpu_percent()  # the first call only starts the measurement
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self._running: str | None = None
        self._since = 0.0

    def sample(self, running: str | None, now: float) -> dict[str, Any]:
        """The ``engine_stats`` content at monotonic time ``now``."""
        if running != self._running:
            self._running, self._since = running, now
        with self.process.oneshot():
            cpu = self.process.cpu_percent()
            memory = self.process.memory_info().rss
        return {
            "pid": self.pid,
            "hostname": self.hostname,
            "cpu": round(cpu, 1),
            "memory": int(memory),
            "running": running,
            "running_for": round(now - self._since, 1) if running else 0.0,
        }
