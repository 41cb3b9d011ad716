"""Envelope cost: serialize + sign + send + receive + verify + deserialize, on loopback tcp.

(a) an empty apply_request, per message; (b) a message carrying a 100 MB numpy array, as
bandwidth. Each beside raw pyzmq multipart (the physical floor) and jupyter_client's Session.
Run: `.bench-venv/bin/python bench/bench_protocol.py` (or `make bench`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zmq

from corral.protocol.serialize import deserialize_object, serialize_object
from corral.protocol.session import Frame, Message, Session

KEY = b"benchmark-key-0123456789"
EMPTY_ROUNDS = 20_000
BIG_ROUNDS = 7
ARRAY = np.random.default_rng(0).random(12_500_000)  # 100 MB of float64


def socket_pair(ctx: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = b.bind_to_random_port("tcp://127.0.0.1")
    a.connect(f"tcp://127.0.0.1:{port}")
    a.linger = b.linger = 0
    return a, b


def send_ours(session: Session, sock: zmq.Socket, buffers: Sequence[Frame] = ()) -> None:
    """Build, sign and send an apply_request, as a client does before handing it off."""
    msg = session.msg("apply_request", {}, buffers=buffers)
    sock.send_multipart(session.serialize(msg), copy=False)


def recv_ours(session: Session, sock: zmq.Socket) -> Message:
    """Receive, verify and decode one message, as every receiving process does."""
    return session.feed(sock.recv_multipart(copy=False))


def per_message(step: Callable[[], object], rounds: int) -> float:
    """Median seconds per message over 5 batches (send then receive, one at a time)."""
    for _ in range(200):
        step()
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds // 5):
            step()
        batches.append((time.perf_counter() - start) / (rounds // 5))
    return statistics.median(batches)


def pipelined(send: Callable[[], object], recv: Callable[[], object], rounds: int) -> float:
    """Median seconds per message when 500 are sent before they are received: transport
    latency overlaps, so what remains is the per-message CPU cost of each side."""
    batch = 500
    times = []
    for _ in range(max(3, rounds // batch)):
        start = time.perf_counter()
        for _ in range(batch):
            send()
        for _ in range(batch):
            recv()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def main() -> None:
    ctx = zmq.Context()
    a, b = socket_pair(ctx)
    ours_send, ours_recv = Session(KEY), Session(KEY)
    try:
        from jupyter_client.session import Session as JupyterSession
    except ImportError:
        JupyterSession = None

    # ---------------------------------------------------------------- (a) empty message
    raw_frames = [b"<IDS|MSG>", b"0" * 64, b"{}", b"{}", b"{}", b"{}"]

    def raw_empty() -> object:
        a.send_multipart(raw_frames, copy=False)
        return b.recv_multipart(copy=False)

    def ours_empty() -> object:
        send_ours(ours_send, a)
        return recv_ours(ours_recv, b)

    results: dict[str, dict[str, float]] = {"empty_us": {}, "pipelined_us": {}, "big_MBps": {}}
    results["empty_us"]["raw pyzmq"] = per_message(raw_empty, EMPTY_ROUNDS) * 1e6
    results["empty_us"]["corral Session"] = per_message(ours_empty, EMPTY_ROUNDS) * 1e6
    results["pipelined_us"]["raw pyzmq"] = (
        pipelined(
            lambda: a.send_multipart(raw_frames, copy=False),
            lambda: b.recv_multipart(copy=False),
            EMPTY_ROUNDS,
        )
        * 1e6
    )
    results["pipelined_us"]["corral Session"] = (
        pipelined(lambda: send_ours(ours_send, a), lambda: recv_ours(ours_recv, b), EMPTY_ROUNDS)
        * 1e6
    )
    if JupyterSession is not None:
        js, jr = JupyterSession(key=KEY), JupyterSession(key=KEY)

        def jupyter_empty() -> object:
            js.send(a, "apply_request", {})
            return jr.recv(b, mode=0)

        results["empty_us"]["jupyter_client Session"] = per_message(jupyter_empty, 5000) * 1e6
        results["pipelined_us"]["jupyter_client Session"] = (
            pipelined(lambda: js.send(a, "apply_request", {}), lambda: jr.recv(b, mode=0), 5000)
            * 1e6
        )

    # ---------------------------------------------------------------- (b) 100 MB array
    size = ARRAY.nbytes

    def raw_big() -> object:
        a.send_multipart([*raw_frames, memoryview(ARRAY)], copy=False)
        frames = b.recv_multipart(copy=False)
        return np.frombuffer(frames[-1].buffer, dtype=ARRAY.dtype)

    def ours_big() -> object:
        send_ours(ours_send, a, serialize_object(ARRAY))
        return deserialize_object(recv_ours(ours_recv, b).buffers)

    def bandwidth(step: Callable[[], object]) -> float:
        step()
        times = []
        for _ in range(BIG_ROUNDS):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return size / statistics.median(times) / 1e6

    results["big_MBps"]["raw pyzmq"] = bandwidth(raw_big)
    received = ours_big()
    assert isinstance(received, np.ndarray) and np.array_equal(received, ARRAY)
    results["big_MBps"]["corral Session"] = bandwidth(ours_big)
    if JupyterSession is not None:

        def jupyter_big() -> object:
            js.send(a, "apply_request", {}, buffers=[memoryview(ARRAY)])
            msg = jr.recv(b, mode=0, copy=False)[1]
            return np.frombuffer(msg["buffers"][0], dtype=ARRAY.dtype)

        results["big_MBps"]["jupyter_client Session"] = bandwidth(jupyter_big)
    a.close()
    b.close()
    ctx.term()

    raw_us = results["empty_us"]["raw pyzmq"]
    ours_us = results["empty_us"]["corral Session"]
    print(f"{'(a) empty message':<28}{'us/msg':>10}{'vs raw':>10}")
    for name, value in results["empty_us"].items():
        print(f"  {name:<26}{value:>10.1f}{value / raw_us:>9.2f}x")
    print(f"{'(a) pipelined, 500 in flight':<28}{'us/msg':>10}{'vs raw':>10}")
    raw_p = results["pipelined_us"]["raw pyzmq"]
    for name, value in results["pipelined_us"].items():
        print(f"  {name:<26}{value:>10.1f}{value / raw_p:>9.2f}x")
    print(f"{'(b) 100 MB numpy array':<28}{'MB/s':>10}{'of raw':>10}")
    raw_bw = results["big_MBps"]["raw pyzmq"]
    for name, value in results["big_MBps"].items():
        print(f"  {name:<26}{value:>10.0f}{value / raw_bw:>9.0%}")
    jupyter_us = results["empty_us"].get("jupyter_client Session")
    jupyter_p = results["pipelined_us"].get("jupyter_client Session")
    ours_p = results["pipelined_us"]["corral Session"]
    summary = {
        "empty_vs_raw": ours_us / raw_us,
        "jupyter_vs_ours": (jupyter_us / ours_us) if jupyter_us else None,
        "pipelined_vs_raw": ours_p / raw_p,
        "pipelined_jupyter_vs_ours": (jupyter_p / ours_p) if jupyter_p else None,
        "big_fraction_of_raw": results["big_MBps"]["corral Session"] / raw_bw,
    }

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "n/a"

    print(
        f"targets: (a) <= 2x raw: ping-pong {ratio(summary['empty_vs_raw'])}, pipelined "
        f"{ratio(summary['pipelined_vs_raw'])}; >= 2x faster than jupyter_client: ping-pong "
        f"{ratio(summary['jupyter_vs_ours'])}, pipelined "
        f"{ratio(summary['pipelined_jupyter_vs_ours'])}; "
        f"(b) >= 80% of raw: {summary['big_fraction_of_raw']:.0%}"
    )
    out = Path(__file__).parent / "results" / "protocol.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
