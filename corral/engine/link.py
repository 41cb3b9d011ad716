"""The engine's link to its controller, as a state machine: the core of :mod:`.io_shell`.

No sockets and no clock here. The shell feeds in what arrives on the registration socket and
the heartbeat pings, calls :meth:`EngineLink.tick` when :meth:`EngineLink.next_deadline` is
reached, passes the time (``now``, ``time.monotonic()``) to every call, and performs the
actions returned. That makes the rules below testable in milliseconds without processes
(tests/engine/test_link.py); the real-process tests in tests/engine/test_engine.py cover the
shell that performs them.

The rules (docs/wire-flows.md, registration and heartbeat):

- **Registration.** :meth:`start` sends ``registration_request``. A refusal that names
  ``id_in_use`` (a supervisor restarting a dead engine under its id can be faster than the
  Hub's death detection) is asked again every ``id_in_use_retry`` seconds while time is left;
  any other refusal, an unusable reply, or no reply within ``registration_timeout`` fails the
  registration (:class:`Fail`).
- **Controller loss.** The Hub pings every heartbeat period. When none has come for
  ``missed_beats`` periods, or a ping names another controller instance (a restarted
  controller that does not know this engine), the engine re-registers under its id, naming the
  tasks it holds and the replies it will send again, every ``missed_beats`` periods until one
  attempt is answered. zmq queues every attempt made while the controller is away, so a
  restarted controller sees them all: it accepts the first and refuses the others as already
  registered; the reply to *any* outstanding attempt is therefore taken, and a refusal only
  counts once no attempt is left. A refusal of the engine's id as in use (the restarted
  controller gave it to an engine that asked first) is followed at once by an attempt under a
  new id. A reply naming other addresses cannot be followed (the heart forwarder cannot be
  moved): the engine exits.
- **Replies kept.** Every reply the engine sends is kept (:class:`~.replies.ReplyLog`) until
  the Hub confirms with ``replies_recorded``; after a re-registration the unconfirmed ones are
  sent again (:class:`Resend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from corral.errors import InvalidContent
from corral.protocol.messages import validate_content
from corral.protocol.session import Frame, Message
from corral.protocol.shm import Settings

from .replies import ReplyLog

ID_IN_USE_RETRY = 0.25  # seconds between registrations asking for an id still in use
DEFAULT_HEARTBEAT_PERIOD = 3.0  # until the registration reply names the Hub's
ADDRESS_FIELDS = ("mux", "control", "task", "iopub", "hb_ping", "hb_pong")
OPTIONAL_ADDRESS_FIELDS = ("copies",)  # the Hub's copies of direct requests (a newer Hub)
# the Hub's lane for those copies (corral.lane), for engines on its host: a name the Hub draws
# anew at each start, so a restarted controller's differs and is not compared (an engine whose
# lane closed sends its copies to ``copies`` from then on)
LANE_FIELDS = ("copies_lane",)


@dataclass(frozen=True)
class LinkSettings:
    """How the engine registers and when it decides its controller is gone."""

    requested_id: int | None = None  # ask the Hub for this engine id (a restarted engine)
    registration_timeout: float = 10.0  # seconds for the first registration to be answered
    missed_beats: int = 5  # heartbeat periods without a ping before the controller is lost
    id_in_use_retry: float = ID_IN_USE_RETRY
    # ask for this engine id first, and take any if it is in use (an engine started by mpiexec
    # prefers its MPI rank, as ipyparallel's); requested_id, when given, wins
    preferred_id: int | None = None


@dataclass(frozen=True)
class SendRegistration:
    """Send ``registration_request`` with this msg_id and content on the registration socket."""

    msg_id: str
    content: dict[str, Any]


@dataclass(frozen=True)
class Registered:
    """The Hub accepted this engine. ``first``: the shell now connects the queues, iopub and
    heart to ``addresses``; otherwise the addresses are the ones already connected."""

    engine_id: int
    addresses: dict[str, str]
    heartbeat_period: float
    shm: Settings | None
    first: bool


@dataclass(frozen=True)
class Resend:
    """Send these kept replies again, in order: ``(channel, frames)``."""

    replies: list[tuple[bytes, list[Frame]]]


@dataclass(frozen=True)
class Fail:
    """The first registration failed: the engine cannot start. ``reason`` is for the user."""

    reason: str


@dataclass(frozen=True)
class Exit:
    """Stop the engine with this status; ``unregister``: tell the Hub first."""

    code: int
    reason: str
    unregister: bool = False


Action = SendRegistration | Registered | Resend | Fail | Exit


class Phase(Enum):
    IDLE = "idle"  # start() not yet called
    REGISTERING = "registering"  # first registration under way
    CONNECTED = "connected"  # registered; the controller's pings arrive
    LOST = "lost"  # re-registering with a controller that stopped pinging or restarted
    DONE = "done"  # failed or exited: nothing more happens


@dataclass
class EngineLink:
    """Registration, controller loss and re-registration of one engine; see the module
    docstring. ``new_msg_id`` makes the msg_id of each request (the session's, in the shell)."""

    uuid: str
    new_msg_id: Callable[[], str]
    settings: LinkSettings = field(default_factory=LinkSettings)
    placement: Mapping[str, Any] = field(default_factory=dict)
    shm_host: str | None = None
    cpus: Mapping[str, Any] | None = None  # its machine and CPU ids, for the scheduler
    direct_address: str | None = None  # where clients on this host may send direct requests
    registration_address: str = "the controller"  # named in the timeout's message
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("corral.engine"))

    phase: Phase = Phase.IDLE
    engine_id: int | None = None
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD
    addresses: dict[str, str] = field(default_factory=dict)
    replies: ReplyLog = field(default_factory=ReplyLog)
    _attempts: set[str] = field(default_factory=set)  # registration requests not answered
    _deadline: float = 0.0  # first registration: when it fails
    _retry_at: float | None = None  # first registration: when to ask again (id in use)
    _last_ping: float = 0.0
    _next_attempt: float = 0.0  # re-registration: when to send the next attempt
    _hub_instance: bytes | None = None
    _id_taken: bool = False  # a restarted controller gave this engine's id to another
    _reported_dropped: int = 0  # replies.dropped when last logged

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        """Begin the first registration."""
        if self.phase is not Phase.IDLE:
            raise RuntimeError(f"the link was already started ({self.phase.value})")
        self.phase = Phase.REGISTERING
        self._deadline = now + self.settings.registration_timeout
        first = self.settings.requested_id
        return [self._attempt(self.settings.preferred_id if first is None else first)]

    def on_registration_message(self, msg: Message, now: float) -> list[Action]:
        """A verified message from the Hub's registration socket."""
        content = msg.content or {}
        if self.phase in (Phase.IDLE, Phase.DONE):
            return []
        if self.phase is Phase.REGISTERING and msg.msg_type != "registration_reply":
            self.log.debug("ignored %s before registration", msg.msg_type)
            return []
        if msg.msg_type == "unregistration_notification":
            if content.get("uuid") in (None, self.uuid):
                return self._exit(1, "the controller unregistered this engine")
            return []
        if msg.msg_type == "replies_recorded":
            self._on_replies_recorded(content)
            return []
        if msg.msg_type != "registration_reply" or msg.parent_id not in self._attempts:
            self.log.debug("ignored %s on the registration socket", msg.msg_type)
            return []
        self._attempts.discard(str(msg.parent_id))
        if self.phase is Phase.REGISTERING:
            return self._on_first_reply(content, now)
        return self._on_reregistration_reply(content, now)

    def on_ping(self, payload: bytes, now: float) -> list[Action]:
        """A ping from the Hub: ``<beat>.<controller instance>`` (a probe adds ``.<n>``). A new
        instance is a restarted controller that does not know this engine: re-register now."""
        if self.phase not in (Phase.CONNECTED, Phase.LOST):
            return []
        self._last_ping = now
        parts = payload.split(b".")
        instance = parts[1] if len(parts) > 1 else b""
        known, self._hub_instance = self._hub_instance, instance
        if known is not None and instance != known and self.phase is Phase.CONNECTED:
            self.log.warning("the controller restarted; re-registering")
            self.phase = Phase.LOST
            self._next_attempt = now
            return self.tick(now)
        return []

    def tick(self, now: float) -> list[Action]:
        """Time passed: retry, time out, notice a silent controller, re-register."""
        if self.phase is Phase.REGISTERING:
            if now >= self._deadline:
                return self._fail(
                    f"no registration reply from {self.registration_address} within "
                    f"{self.settings.registration_timeout:g} s: is the controller running, and "
                    "does the engine's connection file hold its current key?"
                )
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                return [self._attempt(self.settings.requested_id)]
            return []
        window = self.heartbeat_period * self.settings.missed_beats
        if self.phase is Phase.CONNECTED and now - self._last_ping > window:
            self.log.warning("no heartbeat from the controller for %.1f s", now - self._last_ping)
            self.phase = Phase.LOST
            self._next_attempt = now
        if self.phase is Phase.LOST and now >= self._next_attempt:
            self._next_attempt = now + window
            return [self._attempt(None if self._id_taken else self.engine_id, again=True)]
        return []

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (monotonic time); None: only on input."""
        if self.phase is Phase.REGISTERING:
            return self._deadline if self._retry_at is None else min(self._retry_at, self._deadline)
        if self.phase is Phase.CONNECTED:
            return self._last_ping + self.heartbeat_period * self.settings.missed_beats
        if self.phase is Phase.LOST:
            return self._next_attempt
        return None

    # ------------------------------------------------------------------ replies kept

    def received(self, msg_id: str, retries: int | None = None) -> None:
        """A task arrived: a restarted controller must expect its answer from this engine
        (``retries``: its request's, if it came load-balanced)."""
        self.replies.received(msg_id, retries)

    def replied(
        self, channel: bytes, frames: Sequence[Frame], now: float, answers: str | None = None
    ) -> str | None:
        """A reply leaves on ``channel``: kept until recorded. The msg_id it answers
        (``answers``, or read from the frames)."""
        return self.replies.replied(channel, frames, now, answers)

    # ------------------------------------------------------------------ helpers

    def _attempt(self, engine_id: int | None, *, again: bool = False) -> SendRegistration:
        """A registration request; ``again``: to a restarted controller, naming the tasks this
        engine holds and the replies it will send again."""
        content: dict[str, Any] = {"uuid": self.uuid}
        if self.placement:
            content["info"] = dict(self.placement)
        if engine_id is not None:
            content["id"] = engine_id
        if again:
            content["tasks"] = self.replies.to_report()
            balanced = self.replies.balanced_tasks()
            if balanced:
                content["balanced"] = balanced
        if self.shm_host is not None:
            content["shm_host"] = self.shm_host
        if self.cpus is not None:
            content["cpus"] = dict(self.cpus)
        if self.direct_address is not None:
            content["direct"] = self.direct_address
        msg_id = self.new_msg_id()
        self._attempts.add(msg_id)
        return SendRegistration(msg_id, content)

    def _on_first_reply(self, content: dict[str, Any], now: float) -> list[Action]:
        preferred = self.settings.preferred_id
        taken = content.get("id_in_use")
        if taken is not None and preferred is not None and self.settings.requested_id is None:
            if taken == preferred:  # only a preference: any id will do
                self.log.info("engine id %s is in use; registering under another", taken)
                return [self._attempt(None)]
        if taken is not None:
            if self._deadline - now > self.settings.id_in_use_retry:
                self._retry_at = now + self.settings.id_in_use_retry
                return []
        if content.get("status") != "ok":
            return self._fail(
                f"the controller refused registration: {content.get('ename', 'error')}: "
                f"{content.get('evalue', content)}"
            )
        try:
            registered = self._accept(content, first=True)
        except (KeyError, TypeError, ValueError) as err:
            return self._fail(f"unusable registration reply ({err!r}): {content}")
        self.phase = Phase.CONNECTED
        self._last_ping = now
        self._attempts.clear()
        return [registered]

    def _on_reregistration_reply(self, content: dict[str, Any], now: float) -> list[Action]:
        if content.get("status") != "ok":
            if self._attempts:
                return []  # another attempt may yet be accepted
            if content.get("id_in_use") is not None:
                # the restarted controller gave this engine's id to another engine that asked
                # first: pings would never tell this one to ask again, so it asks at once
                # for a new id (its tasks and kept replies are named by uuid, not by id)
                self.log.warning(
                    "engine id %s was given to another engine while the controller was away: "
                    "registering under a new id",
                    content.get("id_in_use"),
                )
                self._id_taken = True
                self._next_attempt = now + self.heartbeat_period * self.settings.missed_beats
                return [self._attempt(None, again=True)]
            self.phase = Phase.CONNECTED  # pings decide again whether it is lost
            self.log.warning(
                "re-registration refused: %s: %s", content.get("ename"), content.get("evalue")
            )
            return []
        self._attempts.clear()
        self._id_taken = False
        if any(
            str(content.get(name)) != self.addresses[name]
            for name in (*ADDRESS_FIELDS, *OPTIONAL_ADDRESS_FIELDS)
            if name in self.addresses
        ):
            return self._exit(1, "the controller came back on other addresses")
        try:
            registered = self._accept(content, first=False)
        except (KeyError, TypeError, ValueError) as err:
            return self._exit(1, f"unusable re-registration reply ({err!r}): {content}")
        self.phase = Phase.CONNECTED
        self._last_ping = now
        resend = self.replies.to_resend()
        if resend:
            self.log.info(
                "sending %d recent replies again to the restarted controller", len(resend)
            )
        return [registered, Resend(resend)]

    def _accept(self, content: dict[str, Any], *, first: bool) -> Registered:
        """The registration reply's fields; KeyError, TypeError or ValueError if unusable."""
        addresses = {name: str(content[name]) for name in ADDRESS_FIELDS}
        addresses.update(
            (name, str(content[name]))
            for name in (*OPTIONAL_ADDRESS_FIELDS, *LANE_FIELDS)
            if name in content
        )
        engine_id = int(content["id"])
        period = float(content.get("heartbeat_period", self.heartbeat_period))
        if not period > 0:
            raise ValueError(f"heartbeat_period must be > 0, not {period}")
        shm = Settings.from_json(content.get("shm"))
        self.addresses, self.engine_id, self.heartbeat_period = addresses, engine_id, period
        self.log.info("registered as engine %d (uuid %s)", engine_id, self.uuid)
        return Registered(engine_id, dict(addresses), period, shm, first)

    def _on_replies_recorded(self, content: dict[str, Any]) -> None:
        """The Hub wrote these replies' records (and every earlier one on their channel).
        Raises InvalidContent for a malformed one (the shell counts and logs the drop)."""
        try:
            validate_content("replies_recorded", content)
        except InvalidContent as err:
            raise InvalidContent(f"dropped replies_recorded: {err}") from None
        for channel, msg_id in content.items():
            self.replies.recorded(channel.encode(), msg_id)
        if self.replies.dropped > self._reported_dropped:
            self.log.warning(
                "the controller has not confirmed %d replies: dropped the oldest %d unconfirmed",
                len(self.replies.recent),
                self.replies.dropped - self._reported_dropped,
            )
            self._reported_dropped = self.replies.dropped

    def _fail(self, reason: str) -> list[Action]:
        self.phase = Phase.DONE
        return [Fail(reason)]

    def _exit(self, code: int, reason: str) -> list[Action]:
        self.phase = Phase.DONE
        return [Exit(code, reason, unregister=False)]
