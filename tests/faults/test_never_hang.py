"""No blocking call waits for ever on a controller that is gone: with the controller killed,
``get()``, ``wait()``, iteration and ``apply_sync`` with no timeout raise ConnectionError once it
has been unreachable for the client's ``outage_grace``; a controller back within the grace
changes nothing and the pending result arrives."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral import Client
from corral.errors import ConnectionError
from tests.conftest import running_cluster

GRACE = 2.0


def _sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def _fails_within_grace(call: Any, *args: Any) -> ConnectionError:
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        call(*args)
    took = time.monotonic() - started
    assert took < GRACE + 15, f"{call} took {took:.1f} s"
    assert "unreachable" in str(info.value)
    return info.value


@pytest.mark.timeout(120)
def test_blocking_calls_raise_once_the_controller_is_gone_for_the_grace(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2) as cluster:
        rc = Client(Path(cluster.path) / "corral-client.json", timeout=GRACE)
        try:
            assert rc.outage_grace == GRACE
            direct = rc[0].apply_async(_sleep, 60)
            mapped = rc.load_balanced_view().map_async(_sleep, [60, 60], ordered=False)
            assert cluster.controller is not None
            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait()
            started = time.monotonic()
            _fails_within_grace(direct.get)
            assert time.monotonic() - started >= GRACE - 0.5  # it waited for the grace first
            _fails_within_grace(direct.wait)
            _fails_within_grace(rc.wait)
            _fails_within_grace(list, mapped)
            _fails_within_grace(mapped.__getitem__, 0)
            _fails_within_grace(rc.load_balanced_view().apply_sync, _sleep, 0)
            _fails_within_grace(rc[1].apply_sync, _sleep, 0)
            assert not direct.done()  # still pending: a controller back later may complete it
        finally:
            rc.close()


@pytest.mark.timeout(120)
def test_a_controller_back_within_the_grace_changes_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2) as cluster:
        rc = Client(Path(cluster.path) / "corral-client.json", timeout=10, outage_grace=60)
        try:
            task = rc.load_balanced_view().apply_async(_sleep, 0.1)
            assert task.get(timeout=30) == 0.1
            assert cluster.controller is not None
            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait()
            outcome: dict[str, Any] = {}

            def waiter() -> None:
                try:
                    outcome["value"] = rc.load_balanced_view().apply_sync(_sleep, 0.2)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    outcome["error"] = exc

            thread = threading.Thread(target=waiter)
            thread.start()
            cluster.controller_args.append("--restore")
            cluster.start_controller()
            thread.join(60)
            assert not thread.is_alive()
            assert outcome == {"value": 0.2}
        finally:
            rc.close()
