"""Fixtures of the engine tests: a fake controller whose engines die with the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.controller_double import FakeController


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[FakeController]:
    fake = FakeController(tmp_path)
    try:
        yield fake
    finally:
        fake.close()
