"""The heartbeat monitor as a state machine: beats are counters, no clock, no sockets."""

from corral.controller.heartbeat import HeartMonitor


def test_new_heart_reported_once() -> None:
    monitor = HeartMonitor(max_misses=3)
    payload, failed = monitor.tick()
    assert failed == []
    assert monitor.pong("a", payload) is True
    assert monitor.pong("a", payload) is False


def test_heart_fails_after_max_misses_exactly_once() -> None:
    monitor = HeartMonitor(max_misses=3)
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    failures = [monitor.tick()[1] for _ in range(6)]
    assert failures[:3] == [[], [], []]
    assert failures[3] == ["a"]
    assert all(f == [] for f in failures[4:])
    assert not monitor.is_alive("a")


def test_steady_heart_never_fails() -> None:
    monitor = HeartMonitor(max_misses=1)
    for _ in range(1000):
        payload, failed = monitor.tick()
        assert failed == []
        monitor.pong("a", payload)


def test_late_answer_to_an_old_beat_still_counts() -> None:
    monitor = HeartMonitor(max_misses=2)
    first, _ = monitor.tick()
    monitor.pong("a", first)
    monitor.tick()
    second, _ = monitor.tick()
    monitor.pong("a", second)
    assert monitor.tick()[1] == []


def test_garbage_and_future_payloads_are_ignored() -> None:
    monitor = HeartMonitor()
    monitor.tick()
    assert monitor.pong("a", b"not a number") is False
    assert monitor.pong("a", b"999") is False
    assert monitor.pong("a", b"-5") is False
    assert not monitor.is_alive("a")


def test_forget() -> None:
    monitor = HeartMonitor()
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    monitor.forget("a")
    assert not monitor.is_alive("a")


def test_repeating_the_current_beat_judges_no_one() -> None:
    monitor = HeartMonitor(max_misses=1)
    payload, _ = monitor.tick()
    monitor.pong("old", payload)
    assert monitor.payload() == payload
    for _ in range(10):  # repeated for a newcomer: "old" is not judged by repeats
        assert monitor.pong("new", monitor.payload()) in (True, False)
    assert monitor.is_alive("old") and monitor.is_alive("new")


def test_suspect_that_answers_a_probe_stays() -> None:
    monitor = HeartMonitor(max_misses=3, probe_limit=4)
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    monitor.suspect("a")
    probe, failed = monitor.probe()
    assert failed == []
    monitor.pong("a", probe)
    assert monitor.suspects == {}
    assert all(monitor.probe()[1] == [] for _ in range(10))
    assert monitor.is_alive("a")


def test_suspect_that_answers_no_probe_fails_once_after_the_limit() -> None:
    monitor = HeartMonitor(max_misses=3, probe_limit=4)
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    monitor.pong("b", payload)
    monitor.suspect("a")
    failures = [monitor.probe()[1] for _ in range(7)]
    assert failures == [[], [], [], [], ["a"], [], []]  # four probes went unanswered
    assert not monitor.is_alive("a") and monitor.is_alive("b")
    assert monitor.tick()[1] == []  # not failed a second time by the beats


def test_answers_sent_before_the_suspicion_do_not_clear_it() -> None:
    monitor = HeartMonitor(max_misses=3, probe_limit=3)
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    old_probe, _ = monitor.probe()
    monitor.suspect("a")
    monitor.pong("a", payload)  # late answers to a beat and a probe from before
    monitor.pong("a", old_probe)
    assert "a" in monitor.suspects
    assert [monitor.probe()[1] for _ in range(4)] == [[], [], [], ["a"]]


def test_probe_payloads_from_the_future_or_garbage_are_ignored() -> None:
    monitor = HeartMonitor(max_misses=3, probe_limit=3)
    payload, _ = monitor.tick()
    monitor.pong("a", payload)
    monitor.suspect("a")
    instance = monitor.instance
    for bad in (b"1.%s.99" % instance, b"1.%s.x" % instance, b"1.other.1"):
        assert monitor.pong("a", bad) is False
    assert "a" in monitor.suspects


def test_unknown_hearts_are_never_suspected() -> None:
    monitor = HeartMonitor()
    monitor.suspect("nobody")
    assert monitor.suspects == {}
