"""Reclaiming segment names that nothing can read any more: those of dead processes.

The decisions are :func:`corral.protocol.shm.plan_sweep`'s; this module lists /dev/shm, asks
the kernel which pids live, and removes. Controllers sweep their own cluster at start,
periodically and at stop; :func:`sweep_others` takes what other clusters' dead processes left
when none of them is left to do it; ``corral stop`` and ``Cluster.stop`` sweep a stopped
cluster whole.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import psutil

from corral.protocol.shm import HUB, parse_link, plan_sweep

__all__ = ["FOREIGN_MIN_AGE", "SHM_DIR", "pid_alive", "sweep", "sweep_others", "unlink_name"]

log = logging.getLogger("corral.sharedmem")

SHM_DIR: Final = Path("/dev/shm")
FOREIGN_MIN_AGE: Final = 60.0  # seconds before another cluster's dead names are swept here


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def sweep(
    prefix: str,
    shm_dir: Path = SHM_DIR,
    alive: Callable[[int], bool] = pid_alive,
    hub_alive: bool = True,
) -> list[str]:
    """Remove the names under ``prefix`` whose owner is dead (see
    :func:`corral.protocol.shm.plan_sweep`); the names removed. ``hub_alive`` False takes
    the Hub's links too (a controller starting, or stopping)."""
    try:
        names = [name for name in os.listdir(shm_dir) if name.startswith(prefix)]
    except OSError:
        return []
    doomed = plan_sweep(prefix, names, lambda pid: hub_alive if pid == HUB else alive(pid))
    for name in doomed:
        unlink_name(shm_dir / name)
    if doomed:
        log.info("shared memory: reclaimed %d segment names of dead processes", len(doomed))
    return doomed


def sweep_others(
    own_prefix: str | None,
    shm_dir: Path = SHM_DIR,
    alive: Callable[[int], bool] = pid_alive,
    min_age: float = FOREIGN_MIN_AGE,
) -> list[str]:
    """Remove what dead processes of *other* clusters of this user left: a cluster whose
    processes were all SIGKILLed (its owner too) has no controller left to sweep its names,
    so every controller that starts sweeps them. The Hubs of those clusters count as alive
    (their ``h`` links stay unless the writer's ``w`` name shows the segment was never handed
    off), since whether they run cannot be told from here. Names of other users are left, and
    names changed in the last ``min_age`` seconds: another cluster's own sweep gets there
    first, and a name that young is no leak yet."""
    try:
        listed = os.listdir(shm_dir)
    except OSError:
        return []
    uid = os.getuid()
    settled = time.time() - min_age
    by_prefix: dict[str, list[str]] = {}
    for name in listed:
        parsed = parse_link(name)
        if parsed is None or parsed.prefix == own_prefix:
            continue
        try:
            info = os.lstat(shm_dir / name)
        except OSError:
            continue
        if info.st_uid != uid or max(info.st_mtime, info.st_ctime) > settled:
            continue
        by_prefix.setdefault(parsed.prefix, []).append(name)
    known: dict[int, bool] = {}

    def is_alive(pid: int) -> bool:
        if pid == HUB:
            return True
        if pid not in known:
            known[pid] = alive(pid)
        return known[pid]

    doomed = [
        name for prefix, names in by_prefix.items() for name in plan_sweep(prefix, names, is_alive)
    ]
    for name in doomed:
        unlink_name(shm_dir / name)
    if doomed:
        log.info(
            "shared memory: reclaimed %d names other clusters' dead processes left", len(doomed)
        )
    return doomed


def unlink_name(path: Path) -> None:
    """Remove one name; one already gone is fine (a sweep and its owner may race)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
