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
