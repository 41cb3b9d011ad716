"""The engine's self-report: its process, and how long the running task has run."""

from __future__ import annotations

import os
import socket
import time

import psutil

from corral.engine.stats import StatsSampler, StatsSubscribers
from corral.protocol.messages import validate_content


def test_a_sample_describes_this_process_and_is_valid_content() -> None:
    sampler = StatsSampler()
    sample = sampler.sample(None, now=10.0)
    sampler.close()
    assert sample["pid"] == os.getpid() and sample["hostname"] == socket.gethostname()
    assert sample["memory"] > 0 and sample["cpu"] >= 0.0
    assert sample["running"] is None and sample["running_for"] == 0.0
    validate_content("engine_stats", sample)


def test_memory_is_the_resident_size_and_cpu_the_share_since_the_last_sample() -> None:
    sampler = StatsSampler()
    ballast = bytearray(64 * 1024 * 1024)  # touched: resident
    for at in range(0, len(ballast), 4096):
        ballast[at] = 1
    resident = psutil.Process().memory_info().rss
    sample = sampler.sample(None, now=1.0)
    assert abs(sample["memory"] - resident) < 16 * 1024 * 1024  # the same figure, read apart
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:  # this thread busy for 0.2 s of CPU
        pass
    busy = sampler.sample(None, now=2.0)
    sampler.close()
    assert busy["cpu"] > 1.0  # 0.2 s of CPU since the last sample (idle: 0.0)
    del ballast


def test_running_time_counts_from_the_first_sample_that_saw_the_task() -> None:
    sampler = StatsSampler()
    assert sampler.sample("a", now=100.0)["running_for"] == 0.0
    assert sampler.sample("a", now=102.5)["running_for"] == 2.5
    assert sampler.sample("b", now=103.0)["running_for"] == 0.0
    assert sampler.sample(None, now=104.0)["running_for"] == 0.0
    assert sampler.sample("b", now=105.0)["running_for"] == 0.0  # b again: a new run


def test_reports_are_wanted_while_a_subscription_may_match_them() -> None:
    subscribers = StatsSubscribers()
    assert not subscribers.wanted
    assert not subscribers.update(b"\x01engine.")  # a client: task output only
    assert not subscribers.update(b"garbage") and not subscribers.update(b"")
    assert subscribers.update(b"\x01stats.") and subscribers.wanted  # the dashboard
    assert not subscribers.update(b"\x01")  # everything (an earlier client): still wanted
    assert not subscribers.update(b"\x00stats.")
    assert subscribers.wanted
    assert subscribers.update(b"\x00") and not subscribers.wanted  # the last one gone
    assert subscribers.update(b"\x01stats.7") and subscribers.wanted  # one engine's
    assert not subscribers.update(b"\x00stats.")  # never subscribed: nothing changes
    assert subscribers.update(b"\x00stats.7") and not subscribers.wanted
