"""Which address a peer connects to: the Unix socket the controller offers when the peer is on
its host, TCP otherwise (corral/protocol/local_sockets.py)."""

from __future__ import annotations

from pathlib import Path

from corral.protocol.local_sockets import (
    CLIENT_FIELDS,
    ENGINE_FIELDS,
    MAX_SOCKET_PATH,
    LocalSockets,
    host_identity,
    prefer_local,
    socket_folder,
)

TCP = {
    "hub": "tcp://127.0.0.1:5000",
    "mux": "tcp://127.0.0.1:5001",
    "control": "tcp://127.0.0.1:5002",
    "task": "tcp://127.0.0.1:5003",
}


def offer(folder: Path, host: str) -> LocalSockets:
    names = ("mux", "control", "task", "mux_engine", "control_engine", "task_engine")
    return LocalSockets(host, {name: f"ipc://{folder}/{name}" for name in names})


def test_a_peer_on_the_controllers_host_uses_the_unix_sockets_offered(tmp_path: Path) -> None:
    here = host_identity()
    chosen = prefer_local(TCP, CLIENT_FIELDS, offer(tmp_path, here), here)
    assert chosen == {
        "hub": TCP["hub"],  # not offered: TCP
        "mux": f"ipc://{tmp_path}/mux",
        "control": f"ipc://{tmp_path}/control",
        "task": f"ipc://{tmp_path}/task",
    }
    engine = prefer_local(TCP, ENGINE_FIELDS, offer(tmp_path, here), here)
    assert engine["mux"] == f"ipc://{tmp_path}/mux_engine"
    assert engine["task"] == f"ipc://{tmp_path}/task_engine"


def test_a_peer_on_another_host_keeps_tcp(tmp_path: Path) -> None:
    chosen = prefer_local(TCP, CLIENT_FIELDS, offer(tmp_path, "another host"), host_identity())
    assert chosen == TCP


def test_a_peer_that_does_not_see_the_folder_keeps_tcp(tmp_path: Path) -> None:
    """Same identity but no such folder (a copied connection file of a cluster gone, say)."""
    here = host_identity()
    assert prefer_local(TCP, CLIENT_FIELDS, offer(tmp_path / "gone", here), here) == TCP


def test_no_offer_or_a_malformed_one_means_tcp(tmp_path: Path) -> None:
    here = host_identity()
    assert prefer_local(TCP, CLIENT_FIELDS, None, here) == TCP
    for section in (
        None,
        {},
        {"mux": "ipc:///x"},  # no host
        {"host": 3, "mux": "ipc:///x"},
        {"host": here},  # nothing offered
        {"host": here, "mux": "tcp://127.0.0.1:1", "control": 7},  # not Unix sockets
    ):
        assert LocalSockets.from_json(section) is None, section


def test_the_section_reads_back_as_written(tmp_path: Path) -> None:
    written = offer(tmp_path, "h")
    assert LocalSockets.from_json(written.to_json()) == written


def test_the_identity_is_stable_in_a_process() -> None:
    assert host_identity() == host_identity()
    assert len(host_identity()) == 32


def test_the_sockets_go_in_the_cluster_folder_or_a_short_one_named_for_it(
    tmp_path: Path,
) -> None:
    short = Path("/c/x")
    assert socket_folder(short, "/tmp") == short / "sockets"
    deep = Path("/" + "d" * MAX_SOCKET_PATH)
    fallback = socket_folder(deep, "/tmp")
    assert fallback is not None and fallback.parent.parent == Path("/tmp")
    assert socket_folder(deep, "/tmp") == fallback  # the same for every run of the cluster
    assert socket_folder(deep / "other", "/tmp") != fallback
    assert socket_folder(deep, "/" + "t" * MAX_SOCKET_PATH) is None  # both too long: TCP
