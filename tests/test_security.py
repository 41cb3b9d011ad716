"""CurveZMQ (``--curve``): the keys module alone, then a real curve cluster that must work for
its own members and refuse everyone else, on every TCP port it listens on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from corral.cli.flags import build_parser, controller_args
from corral.client.client import Client
from corral.errors import ConnectionError
from corral.protocol.connection_files import EngineConnection
from corral.protocol.serialize import pack_apply_message
from corral.protocol.session import Session
from corral.security import (
    CurveKeys,
    client_options,
    make_client,
    make_server,
    server_options,
    start_authenticator,
)
from tests.conftest import running_cluster
from tests.polling import until

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
PEER: dict[int, int] = {  # the socket type that talks to each kind of bound socket
    zmq.ROUTER: zmq.DEALER,
    zmq.PUB: zmq.SUB,
    zmq.XPUB: zmq.SUB,
    zmq.SUB: zmq.PUB,
    zmq.XSUB: zmq.PUB,
    zmq.PULL: zmq.PUSH,
}
Setup = Callable[[zmq.Socket[Any]], None]


def handshake(context: zmq.Context[Any], kind: int, address: str, setup: Setup) -> bool:
    """Whether a ``kind`` socket prepared by ``setup`` completes a ZMTP handshake with
    ``address``: the first handshake outcome its monitor reports (bounded wait)."""
    sock = context.socket(kind)
    sock.linger = 0
    setup(sock)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED)
    try:
        sock.connect(address)
        assert monitor.poll(10_000), f"no handshake outcome from {address} within 10 s"
        return bool(recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def plain(sock: zmq.Socket[Any]) -> None:
    """No curve at all: the NULL mechanism."""


def curve_with(keys: CurveKeys) -> Setup:
    return lambda sock: make_client(sock, keys)


def stranger_keys(cluster_keys: CurveKeys) -> CurveKeys:
    """The cluster's server key (public knowledge) but a client keypair of one's own."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(cluster_keys.server_public, public, secret)


# ------------------------------------------------------------------ corral.security alone


def test_generated_keys_are_consistent_and_the_file_section_has_no_server_secret() -> None:
    keys = CurveKeys.generate()
    assert keys.server_secret is not None
    assert zmq.curve_public(keys.server_secret) == keys.server_public
    section = keys.to_connection()
    assert set(section) == {"server_public", "client_public", "client_secret"}
    assert keys.server_secret.decode() not in json.dumps(section)
    back = CurveKeys.from_connection({"curve": section})
    assert back == CurveKeys(keys.server_public, keys.client_public, keys.client_secret)
    assert CurveKeys.from_connection({"curve": keys.to_settings()}) == keys
    assert CurveKeys.from_connection({"key": "abc"}) is None
    assert keys.server_secret.decode() not in repr(keys)
    assert keys.client_secret.decode() not in repr(keys)


@pytest.mark.parametrize(
    "section",
    [
        "not an object",
        {"server_public": "x" * 40},
        {"server_public": "short", "client_public": "short", "client_secret": "short"},
        {"server_public": "\u00e9" * 40, "client_public": "x" * 40, "client_secret": "x" * 40},
        {"server_public": 40, "client_public": None, "client_secret": []},
    ],
)
def test_a_malformed_curve_section_is_a_connection_error(section: object) -> None:
    with pytest.raises(ConnectionError):
        CurveKeys.from_connection({"curve": section})


def test_keys_that_do_not_match_their_secret_are_refused() -> None:
    keys = CurveKeys.generate()
    other = CurveKeys.generate()
    mismatched = dict(keys.to_connection(), client_public=other.client_public.decode())
    with pytest.raises(ConnectionError, match="does not match"):
        CurveKeys.from_connection({"curve": mismatched})
    assert keys.server_secret is not None and other.server_secret is not None
    with pytest.raises(ValueError, match="server public key"):
        CurveKeys(keys.server_public, keys.client_public, keys.client_secret, other.server_secret)


def test_options_for_servers_and_clients() -> None:
    keys = CurveKeys.generate()
    assert (zmq.CURVE_SERVER, 1) in server_options(keys)
    assert (zmq.CURVE_SERVERKEY, keys.server_public) in client_options(keys)
    without_secret = CurveKeys.from_connection({"curve": keys.to_connection()})
    assert without_secret is not None
    with pytest.raises(ValueError, match="server secret"):
        server_options(without_secret)


@pytest.mark.parametrize("kind", sorted(PEER))
def test_the_authenticator_admits_the_cluster_client_key_only(kind: int) -> None:
    keys = CurveKeys.generate()
    server_context: zmq.Context[Any] = zmq.Context()
    client_context: zmq.Context[Any] = zmq.Context()
    authenticator = start_authenticator(server_context, keys)
    try:
        server = server_context.socket(kind)
        server.linger = 0
        make_server(server, keys)
        address = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
        peer = PEER[kind]
        assert handshake(client_context, peer, address, curve_with(keys))
        assert not handshake(client_context, peer, address, curve_with(stranger_keys(keys)))
        assert not handshake(client_context, peer, address, plain)
        server.close()
    finally:
        authenticator.stop()
        server_context.destroy(linger=0)
        client_context.destroy(linger=0)


def test_a_curve_round_trip_over_tcp() -> None:
    keys = CurveKeys.generate()
    context: zmq.Context[Any] = zmq.Context()
    authenticator = start_authenticator(context, keys)
    try:
        server = context.socket(zmq.ROUTER)
        make_server(server, keys)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = context.socket(zmq.DEALER)
        make_client(client, keys)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert server.poll(10_000)
        _, payload = server.recv_multipart()
        assert payload == b"hello"
    finally:
        authenticator.stop()
        context.destroy(linger=0)


def test_engine_connection_info_reads_the_curve_section() -> None:
    keys = CurveKeys.generate()
    info = {"key": "k", "registration": 5555, "curve": keys.to_connection()}
    assert EngineConnection.from_json(info).curve == CurveKeys.from_connection(info)
    assert EngineConnection.from_json({"key": "k", "registration": 5555}).curve is None


def test_the_cli_passes_curve_through_to_the_controller() -> None:
    args = build_parser().parse_args(["start", "--curve", "-n", "1"])
    assert args.curve and "--curve" in controller_args(args)
    assert "--curve" not in controller_args(build_parser().parse_args(["start"]))


# ------------------------------------------------------------------ a real curve cluster


@pytest.fixture(scope="module")
def curve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_cluster(tmp_path_factory.mktemp("curve"), 2, controller_args=["--curve"]) as c:
        yield c


@pytest.fixture
def rc(curve_cluster: Any) -> Client:
    client: Client = curve_cluster.client
    client.wait_for_engines(2, timeout=30)
    return client


def connection(cluster: Any, name: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((Path(cluster.path) / name).read_text())
    return info


def cluster_keys(cluster: Any) -> CurveKeys:
    keys = CurveKeys.from_connection(connection(cluster, "corral-client.json"))
    assert keys is not None
    return keys


def test_apply_map_and_push_pull_work_over_curve(rc: Client) -> None:
    assert rc[:].apply_sync(lambda x: x + 1, 41) == [42, 42]
    view = rc.load_balanced_view()
    assert view.map_sync(lambda x: x * x, range(20)) == [x * x for x in range(20)]
    array = np.arange(1_000_000, dtype=np.float64)
    rc[:].push({"a": array}, block=True)
    for back in rc[:].pull("a", block=True):
        assert np.array_equal(back, array)
    out = rc[0].execute("print('through curve')", block=True)
    assert out is not None


def test_the_hub_records_direct_and_load_balanced_tasks_over_curve(rc: Client) -> None:
    """Copies reach the Hub both from the devices (inproc) and from the scheduler (TCP, curve)."""
    direct = rc[0].apply_async(lambda: "direct")
    balanced = rc.load_balanced_view().apply_async(lambda: "balanced")
    assert (direct.get(timeout=30), balanced.get(timeout=30)) == ("direct", "balanced")
    msg_ids = [*direct.msg_ids, *balanced.msg_ids]

    def recorded() -> bool:  # the Hub records a moment after the client has its results
        return set(msg_ids) <= set(rc.hub_history()) and not rc.result_status(msg_ids)["pending"]

    until(recorded, 10, "the Hub to record the tasks")
    records = rc.db_query({"msg_id": {"$in": msg_ids}}, keys=["msg_id", "engine_id"])
    assert all(record["engine_id"] is not None for record in records)
    assert len(records) == 2


def test_connection_files_hold_the_keys_and_no_server_secret(curve_cluster: Any) -> None:
    client_info = connection(curve_cluster, "corral-client.json")
    engine_info = connection(curve_cluster, "corral-engine.json")
    assert client_info["curve"] == engine_info["curve"]
    assert set(client_info["curve"]) == {"server_public", "client_public", "client_secret"}
    server_public = client_info["curve"]["server_public"].encode()
    # no 40-character z85 string in any file of the cluster folder is the server's secret
    for path in Path(curve_cluster.path).iterdir():
        if path.is_file():
            text = path.read_text(errors="replace")
            for token in re.findall(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}", text):
                try:
                    public = zmq.curve_public(token.encode())
                except zmq.ZMQError:
                    continue  # not a key: z85 letters that decode past 32 bits (a path, a log line)
                assert public != server_public, path.name
    # nor is it on the scheduler's command line: it travels on its stdin
    for child in psutil.Process(curve_cluster.controller.pid).children():
        assert all(len(arg) != 40 for arg in child.cmdline()[1:])


def listening_ports(cluster: Any) -> set[int]:
    controller = psutil.Process(cluster.controller.pid)
    ports = set()
    for process in [controller, *controller.children()]:
        for conn in process.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                ports.add(conn.laddr.port)
    return ports


def test_every_listening_port_refuses_plain_peers_and_strange_keys(curve_cluster: Any) -> None:
    keys = cluster_keys(curve_cluster)
    info = {
        **connection(curve_cluster, "corral-engine.json"),
        **connection(curve_cluster, "corral-client.json"),
    }
    kinds = {
        "registration": zmq.ROUTER,
        "notification": zmq.PUB,
        "hb_ping": zmq.PUB,
        "hb_pong": zmq.ROUTER,
        "iopub": zmq.XPUB,
        "iopub_engine": zmq.XSUB,
        "copies_engine": zmq.PULL,  # the engines' copies of direct requests
        **{
            name: zmq.ROUTER
            for name in ("mux", "control", "task", "mux_engine", "control_engine", "task_engine")
        },
    }
    by_port = {int(info[name]): kind for name, kind in kinds.items()}
    others = listening_ports(curve_cluster) - set(by_port)
    # the Hub's SUB for the scheduler's copies is a Unix socket whose file is gone once the
    # scheduler is connected: no one else can connect (tests/controller/test_app.py)
    assert not others, others
    by_address = {f"tcp://127.0.0.1:{port}": kind for port, kind in by_port.items()}
    context: zmq.Context[Any] = zmq.Context()
    try:
        for address, kind in by_address.items():
            peer = PEER[kind]
            assert handshake(context, peer, address, curve_with(keys)), address
            assert not handshake(context, peer, address, plain), address
            assert not handshake(context, peer, address, curve_with(stranger_keys(keys))), address
    finally:
        context.destroy(linger=0)


def test_a_client_without_the_curve_keys_cannot_connect(curve_cluster: Any, tmp_path: Path) -> None:
    info = connection(curve_cluster, "corral-client.json")
    del info["curve"]
    stripped = tmp_path / "corral-client.json"
    stripped.write_text(json.dumps(info))
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="refused the handshake"):
        Client(connection_file=stripped, timeout=10)
    assert time.monotonic() - started < 10


def test_a_signed_request_from_a_stranger_key_never_runs(
    curve_cluster: Any, rc: Client, tmp_path: Path
) -> None:
    """Holding the HMAC key is not enough: without the cluster's client key, a correctly
    signed apply_request sent to the mux or task port never reaches an engine."""
    info = connection(curve_cluster, "corral-client.json")
    keys = cluster_keys(curve_cluster)
    session = Session(info["key"], username="stranger")
    engine_uuid = rc.resolve_targets(0)[0][1].encode()

    def touch(path: str) -> str:
        open(path, "w").close()  # noqa: SIM115
        return path

    def request(marker: Path) -> list[Any]:
        buffers = pack_apply_message(touch, (str(marker),), {})
        return session.serialize(session.msg("apply_request", {}, buffers=buffers))

    context: zmq.Context[Any] = zmq.Context()
    try:
        for channel, idents in (("mux", [engine_uuid]), ("task", [])):
            address = f"tcp://127.0.0.1:{info[channel]}"
            marker = tmp_path / f"stranger-{channel}"
            stranger = context.socket(zmq.DEALER)
            stranger.linger = 0
            make_client(stranger, stranger_keys(keys))
            monitor = stranger.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED)
            stranger.connect(address)
            try:
                stranger.send_multipart([*idents, *request(marker)], copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # the handshake failed first: the socket has no peer to queue it for
            assert monitor.poll(10_000)
            assert recv_monitor_message(monitor)["event"] & HANDSHAKE_FAILED
            # the engine answers later work, so it had every chance to run the stranger's
            assert rc[0].apply_sync(lambda: "alive") == "alive"
            assert rc.load_balanced_view().apply_sync(lambda: "alive") == "alive"
            assert not stranger.poll(0)
            assert not marker.exists()
            stranger.disable_monitor()
            monitor.close(linger=0)
            stranger.close(linger=0)

            # control: the same request with the cluster's client key does run
            member_marker = tmp_path / f"member-{channel}"
            member = context.socket(zmq.DEALER)
            member.linger = 0
            make_client(member, keys)
            member.connect(address)
            member.send_multipart([*idents, *request(member_marker)], copy=False)
            assert member.poll(10_000), "no reply to the member's request"
            reply = session.feed(member.recv_multipart())
            assert reply.content is not None and reply.content["status"] == "ok"
            assert member_marker.exists()
            member.close(linger=0)
    finally:
        context.destroy(linger=0)
