"""The dashboard's picture of the cluster, as a state machine fed by what the Hub says.

Inputs: a ``status_reply`` once per tick (queue lengths, counts, recent completions), the
Hub's registration notifications, and the engines' ``engine_stats`` messages. Outputs: a full
snapshot for a page that just connected, and a small update per tick for pages already open
(engines, one point of the load series, the completions since the last tick). Times are given
by the caller (monotonic seconds for ages, wall-clock seconds for the series), so tests drive
it without a clock or a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SERIES_LENGTH = 900  # points (seconds at the default tick): the last 15 minutes
TIMELINE_WINDOW = 600.0  # seconds of completions kept for the Gantt timeline
TIMELINE_MAX = 20_000  # completions kept at most (a fast cluster fills the window sooner)
DEAD_KEPT = 64  # dead engines still shown (the oldest are dropped)
STATS_STALE = 5.0  # seconds after which an engine's last stats are not shown as current
RESTART_WAIT = 60.0  # seconds a restarting engine waits for its successor before it is dead


@dataclass
class EngineView:
    """One engine as the page shows it."""

    id: int
    uuid: str
    state: str = "idle"  # idle | busy | dead | restarting
    registered: str = ""
    queue: int = 0  # direct (MUX) tasks sent and not answered
    tasks: int = 0  # load-balanced tasks assigned and not answered
    completed: int = 0
    hostname: str = ""
    pid: int | None = None
    cpu: float | None = None
    memory: int | None = None
    running: str | None = None
    running_for: float = 0.0
    stats_at: float | None = None  # monotonic time of the last stats
    died_at: float | None = None
    replaced_by: int | None = None

    def as_json(self, now: float) -> dict[str, Any]:
        fresh = self.stats_at is not None and now - self.stats_at < STATS_STALE
        alive = self.state not in ("dead", "restarting")
        return {
            "id": self.id,
            "uuid": self.uuid,
            "state": self.state,
            "registered": self.registered,
            "queue": self.queue,
            "tasks": self.tasks,
            "completed": self.completed,
            "hostname": self.hostname,
            "pid": self.pid,
            "cpu": self.cpu if fresh and alive else None,
            "memory": self.memory if fresh and alive else None,
            "running": self.running if fresh and alive else None,
            "running_for": (
                round(self.running_for + (now - (self.stats_at or now)), 1)
                if fresh and alive and self.running
                else 0.0
            ),
            "replaced_by": self.replaced_by,
        }


@dataclass
class ClusterModel:
    """Engines, the load over time, and recent completions, for one cluster."""

    cluster_id: str
    engines: dict[int, EngineView] = field(default_factory=dict)
    series: deque[list[float]] = field(default_factory=lambda: deque(maxlen=SERIES_LENGTH))
    timeline: deque[list[Any]] = field(default_factory=lambda: deque(maxlen=TIMELINE_MAX))
    seq: int = 0  # the last completion sequence number seen
    counts: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    unassigned: int = 0
    pending: int = 0
    connected: bool = False
    instance: str | None = None  # the controller run the sequence numbers belong to
    _last_counts: tuple[float, int, int] | None = None  # (wall time, done, failed)
    _new: list[list[Any]] = field(default_factory=list)
    _restarts: list[int] = field(default_factory=list)  # engines awaiting a successor

    # ------------------------------------------------------------ inputs

    def on_status(self, reply: dict[str, Any], now: float, wall: float) -> None:
        """A ``status_reply``: queue lengths, counts, and completions since :attr:`seq`."""
        self.connected = True
        listed: set[int] = set()
        for key, info in reply.get("engines", {}).items():
            engine_id = int(key)
            listed.add(engine_id)
            engine = self.engines.get(engine_id)
            if engine is None or engine.state == "dead":
                engine = self._add(engine_id, str(info.get("uuid", "")))
            engine.registered = str(info.get("registered", ""))
            engine.queue = int(info.get("queue", 0))
            engine.tasks = int(info.get("tasks", 0))
            engine.completed = int(info.get("completed", 0))
            self._settle(engine, now)
        for engine in list(self.engines.values()):
            if engine.id not in listed and engine.state not in ("dead", "restarting"):
                self._die(engine, now)  # gone while a notification was on its way
            elif engine.state == "restarting" and now - (engine.died_at or now) > RESTART_WAIT:
                self._restarts.remove(engine.id)  # its successor never registered
                self._die(engine, now)
        self.unassigned = int(reply.get("unassigned", 0))
        self.pending = int(reply.get("pending", 0))
        self.submitted = int(reply.get("submitted", 0))
        self.counts = {str(k): int(v) for k, v in reply.get("counts", {}).items()}
        instance = reply.get("instance")
        if self.instance is not None and instance != self.instance:
            # a restarted controller numbers completions from 1 again: ask from the start
            self.instance, self.seq, self._last_counts = instance, 0, None
            self._add_point(wall)
            return
        self.instance = instance
        self.seq = int(reply.get("seq", self.seq))
        for item in reply.get("recent", []):
            completion = list(item[1:6])
            self.timeline.append(completion)
            self._new.append(completion)
        self._add_point(wall)

    def _add_point(self, wall: float) -> None:
        done = sum(self.counts.values())
        failed = done - self.counts.get("ok", 0)
        rate = failure_rate = 0.0
        if self._last_counts is not None:
            then, done_before, failed_before = self._last_counts
            elapsed = wall - then
            if elapsed > 0:
                rate = max(0, done - done_before) / elapsed
                failure_rate = max(0, failed - failed_before) / elapsed
        self._last_counts = (wall, done, failed)
        self.series.append(
            [round(wall, 3), round(rate, 2), round(failure_rate, 2), self.unassigned, self.pending]
        )

    def on_registration(self, engine_id: int, uuid: str, now: float) -> None:
        self._add(engine_id, uuid)
        if self._restarts:
            old = self.engines.get(self._restarts.pop(0))
            if old is not None:
                old.replaced_by = engine_id
                old.state = "dead"
                old.died_at = old.died_at or now

    def on_unregistration(self, engine_id: int, now: float) -> None:
        engine = self.engines.get(engine_id)
        if engine is not None and engine.state != "restarting":
            self._die(engine, now)

    def on_stats(self, engine_id: int, content: dict[str, Any], now: float) -> None:
        """An engine's ``engine_stats``; stats of an engine not (yet) known are dropped."""
        engine = self.engines.get(engine_id)
        if engine is None or engine.state in ("dead", "restarting"):
            return
        engine.hostname = str(content.get("hostname", ""))
        pid = content.get("pid")
        engine.pid = pid if isinstance(pid, int) else None
        engine.cpu = float(content.get("cpu", 0.0))
        engine.memory = int(content.get("memory", 0))
        running = content.get("running")
        engine.running = running if isinstance(running, str) else None
        engine.running_for = float(content.get("running_for", 0.0))
        engine.stats_at = now
        self._settle(engine, now)

    def mark_restarting(self, engine_id: int, now: float) -> None:
        """The dashboard asked this engine to stop and started a successor."""
        engine = self.engines[engine_id]
        engine.state = "restarting"
        engine.died_at = now
        self._restarts.append(engine_id)

    def on_disconnected(self) -> None:
        self.connected = False

    # ------------------------------------------------------------ outputs

    def snapshot(self, now: float, wall: float) -> dict[str, Any]:
        """Everything a page needs when it connects."""
        self._prune(wall)
        return {
            "type": "snapshot",
            **self._summary(now),
            "series": list(self.series),
            "timeline": list(self.timeline),
        }

    def update(self, now: float) -> dict[str, Any]:
        """What changed since the last update (call once per tick, after :meth:`on_status`)."""
        new, self._new = self._new, []
        return {
            "type": "update",
            **self._summary(now),
            "point": self.series[-1] if self.series else None,
            "completions": new[-TIMELINE_MAX:],
        }

    def engine_rows(self, now: float) -> list[dict[str, Any]]:
        return [self.engines[key].as_json(now) for key in sorted(self.engines)]

    def _summary(self, now: float) -> dict[str, Any]:
        alive = sum(1 for e in self.engines.values() if e.state in ("idle", "busy"))
        return {
            "cluster_id": self.cluster_id,
            "connected": self.connected,
            "engines": self.engine_rows(now),
            "alive": alive,
            "counts": self.counts,
            "submitted": self.submitted,
            "unassigned": self.unassigned,
            "pending": self.pending,
        }

    # ------------------------------------------------------------ helpers

    def _add(self, engine_id: int, uuid: str) -> EngineView:
        engine = self.engines.get(engine_id)
        if engine is None or engine.uuid != uuid or engine.state == "dead":
            engine = EngineView(engine_id, uuid)
            self.engines[engine_id] = engine
        return engine

    def _settle(self, engine: EngineView, now: float) -> None:
        if engine.state in ("dead", "restarting"):
            return
        fresh = engine.stats_at is not None and now - engine.stats_at < STATS_STALE
        busy = engine.queue + engine.tasks > 0 or (fresh and engine.running is not None)
        engine.state = "busy" if busy else "idle"

    def _die(self, engine: EngineView, now: float) -> None:
        engine.state = "dead"
        engine.died_at = now
        engine.queue = engine.tasks = 0
        engine.running = None
        dead = sorted(
            (e for e in self.engines.values() if e.state == "dead"),
            key=lambda e: e.died_at or 0.0,
        )
        for old in dead[: max(0, len(dead) - DEAD_KEPT)]:
            del self.engines[old.id]

    def _prune(self, wall: float) -> None:
        """Drop timeline entries older than the window (by completion time, ISO strings)."""
        cutoff = datetime.fromtimestamp(wall - TIMELINE_WINDOW, UTC).isoformat()
        while self.timeline and (self.timeline[0][4] or "") < cutoff:
            self.timeline.popleft()
