"""A request queued for a controller that died never acts on the one restarted in its place
(the reproduction of issue 12: a queued hub_shutdown_request stopped a restored controller 4 ms
after it started), and a clean stop keeps what ``--restore`` needs (key and ports)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.protocol.session import Session
from tests.conftest import running_cluster


def _request(sock: zmq.Socket[Any], session: Session, msg_type: str, **content: Any) -> None:
    sock.send_multipart(session.serialize(session.msg(msg_type, content)))


def _reply(sock: zmq.Socket[Any], session: Session) -> dict[str, Any]:
    assert sock.poll(30_000), "no reply within 30 s"
    content = session.feed(sock.recv_multipart()).content
    assert isinstance(content, dict)
    return content


@pytest.mark.timeout(120)
def test_a_shutdown_queued_while_the_controller_was_dead_does_not_stop_its_successor(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        info = json.loads((cluster.path / "corral-client.json").read_text())
        session = Session(info["key"].encode())
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.connect(f"tcp://127.0.0.1:{info['registration']}")
            _request(sock, session, "connection_request")
            first_run = _reply(sock, session)["controller"]
            assert cluster.controller is not None
            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait()
            # queued by zmq while the controller is gone, delivered to the next one
            _request(sock, session, "hub_shutdown_request", controller=first_run)
            cluster.controller_args.append("--restore")
            cluster.start_controller()
            refused = _reply(sock, session)
            assert refused["status"] == "error" and refused["ename"] == "StaleRequest"
            _request(sock, session, "connection_request")
            second_run = _reply(sock, session)["controller"]
            assert second_run != first_run
            assert cluster.controller.poll() is None, "the restored controller was stopped"
            cluster.client.wait_for_engines(1, timeout=30)
            assert cluster.client[0].apply_sync(lambda: "still working") == "still working"
        finally:
            sock.close()
            context.term()


@pytest.mark.timeout(120)
def test_purge_meant_for_an_earlier_run_is_refused_and_current_one_works(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        rc = cluster.client
        done = rc[0].apply_async(lambda: 1)
        done.get(timeout=30)
        info = json.loads((cluster.path / "corral-client.json").read_text())
        session = Session(info["key"].encode())
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.connect(f"tcp://127.0.0.1:{info['registration']}")
            _request(sock, session, "purge_request", msg_ids="all", controller="0123abcd")
            assert _reply(sock, session)["ename"] == "StaleRequest"
        finally:
            sock.close()
            context.term()
        assert rc.get_result(done.msg_ids).get(timeout=30) == [1]  # nothing was purged
        rc.purge_results("all")  # the client names the current run: accepted


@pytest.mark.timeout(120)
def test_a_clean_stop_keeps_the_ports_and_key_for_restore(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        before = json.loads((cluster.path / "corral-engine.json").read_text())
    assert not (cluster.path / "corral-engine.json").exists()
    with running_cluster(tmp_path, 1, cluster_id=cluster.cluster_id) as again:
        assert again.cluster_id == cluster.cluster_id
        again_info = json.loads((again.path / "corral-engine.json").read_text())
        assert again_info["key"] != before["key"]  # no --restore: a fresh controller
    with running_cluster(
        tmp_path, 1, cluster_id=cluster.cluster_id, controller_args=["--restore"]
    ) as restored:
        info = json.loads((restored.path / "corral-engine.json").read_text())
        assert info["key"] == again_info["key"]
        for port in ("registration", "mux_engine", "task_engine", "hb_ping", "hb_pong"):
            assert info[port] == again_info[port], port
