"""The engine's self-report: its process, and how long the running task has run."""

from __future__ import annotations

import os
import socket

from corral.engine.stats import StatsSampler
from corral.protocol.messages import validate_content


def test_a_sample_describes_this_process_and_is_valid_content() -> None:
    sample = StatsSampler().sample(None, now=10.0)
    assert sample["pid"] == os.getpid() and sample["hostname"] == socket.gethostname()
    assert sample["memory"] > 0 and sample["cpu"] >= 0.0
    assert sample["running"] is None and sample["running_for"] == 0.0
    validate_content("engine_stats", sample)


def test_running_time_counts_from_the_first_sample_that_saw_the_task() -> None:
    sampler = StatsSampler()
    assert sampler.sample("a", now=100.0)["running_for"] == 0.0
    assert sampler.sample("a", now=102.5)["running_for"] == 2.5
    assert sampler.sample("b", now=103.0)["running_for"] == 0.0
    assert sampler.sample(None, now=104.0)["running_for"] == 0.0
    assert sampler.sample("b", now=105.0)["running_for"] == 0.0  # b again: a new run
