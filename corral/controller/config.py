"""What a controller is told: :class:`ControllerConfig`, and the settings derived from it.

Data only, checked when made: the CLI and :class:`~corral.cluster.cluster.Cluster` build one
from flags, :mod:`corral.controller.app` starts a controller from it. Kept apart from the
controller itself so that reading or building a configuration binds no socket and starts no
process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corral.controller.heartbeat import AWAIT_AT_LEAST
from corral.controller.packing import BURST_PACKING, check_burst_packing
from corral.controller.scheduling_state import (
    BURST_PREFETCH,
    LONG_TASK,
    check_burst_prefetch,
    check_long_task,
)
from corral.controller.store import RetentionSettings
from corral.protocol.shm import (
    DEFAULT_THRESHOLD,
    LONE_HUB_LINK_GRACE,
    Settings,
    check_lone_hub_link_grace,
)
from corral.sharedmem import cluster_prefix, host_identity

__all__ = ["ControllerConfig", "shm_settings"]


@dataclass(frozen=True)
class ControllerConfig:
    """Everything a controller needs; the CLI and Cluster build it from flags."""

    cluster_path: Path
    cluster_id: str = "default"
    ip: str = "127.0.0.1"
    transport: str = "tcp"
    key: bytes = b""
    insecure: bool = False
    heartbeat_period: float = 3.0
    max_misses: int = 3
    db: str = "sqlite"
    restore: bool = False
    scheduler_policy: str = "leastload"
    max_outstanding: int = 16
    scheduler: bool = True
    curve: bool = False
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    shm_threshold: int = DEFAULT_THRESHOLD  # bytes; 0 turns the same-host fast path off
    # seconds an engine a restored record or a direct copy names has at least to register
    # before it is declared gone (corral.controller.hub_gone)
    reregistration_grace: float = AWAIT_AT_LEAST
    # seconds a Hub link to a segment stays alone before the sweep removes it (corral.sharedmem)
    lone_hub_link_grace: float = LONE_HUB_LINK_GRACE
    location: str | None = None  # the address others connect to (default: see location.py)
    hub_nice: int = 10  # nice steps the Hub's threads run below the data path (corral.priority)
    # an engine answering sub-millisecond tasks in bursts may hold this many times
    # max_outstanding (corral.controller.scheduling); 1: never more
    burst_prefetch: int = BURST_PREFETCH
    # a burst of such tasks on a host with more engines than this per core runs on this many
    # engines per core of it (corral.controller.packing); 0: never packed
    burst_packing: int = BURST_PACKING
    # seconds from which a task counts as long: its engine then holds one task at a time, as
    # under ipyparallel's scheduler (corral.controller.scheduling); 0: always max_outstanding
    long_task: float = LONG_TASK

    def __post_init__(self) -> None:
        """Refuse a scheduler setting the scheduler process would refuse only once started;
        spell the wildcard ``*`` (ipyparallel's ``--ip="*"``) as 0.0.0.0, which the sockets
        bind and the controller's own processes (its scheduler) can also connect to."""
        if self.ip == "*":
            object.__setattr__(self, "ip", "0.0.0.0")
        check_burst_prefetch(self.burst_prefetch)
        check_burst_packing(self.burst_packing)
        check_long_task(self.long_task)
        check_lone_hub_link_grace(self.lone_hub_link_grace)
        if not 0 <= self.reregistration_grace < float("inf"):
            grace = self.reregistration_grace
            raise ValueError(f"the reregistration grace must be 0 or more seconds, not {grace}")
        if self.max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, not {self.max_outstanding}")


def shm_settings(config: ControllerConfig) -> Settings | None:
    """The cluster's fast-path settings; None (off) when turned off, on an unsigned cluster
    (a reference must come with a signature) or without a usable /dev/shm."""
    host = host_identity()
    if config.shm_threshold <= 0 or not config.key or host is None:
        return None
    return Settings(cluster_prefix(config.cluster_path), host, config.shm_threshold)
