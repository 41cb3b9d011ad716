"""Same-host data at memory speed: push and pull of 100 MB and 1 GB arrays, in one run, by

- corral with its same-host fast path (buffers through /dev/shm; the default), with the SQLite
  result store (the default) and with the memory store;
- corral with the fast path off (``--shm-threshold 0``: every byte through the sockets);
- Ray (its object store hands buffers over in shared memory): ``ray.get(holder.set.remote(a))``
  to push into an actor that keeps the array, ``ray.get(holder.get.remote())`` to pull it;
- raw pyzmq: a PAIR in one process (copy=False), and REQ -> C proxy process -> REP process (the
  topology of a corral push, without corral).

Plus the no-op round trip on one engine with the fast path on and off: below the threshold
nothing changes, so the latency must not either; and, in-process (where the machine's load
hardly shows), what the fast path's hooks add to one small message.

Push: the array to one engine, answered once the engine holds it; pull: back to the client.
All of them run at once and take turns, round by round (the machine is shared: whatever load
there is falls on every figure alike). Each figure is the median of ``ROUNDS[size]`` transfers
after one warm-up, in MB/s, checked once per size (the pulled array equals the pushed one).
corral's results are purged after each transfer (outside the timing) so that the Hub's store
does not grow by a gigabyte per round.
Run: `.bench-venv/bin/python bench/bench_shm.py` (about 5 minutes).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import psutil
from bench_cluster import raw_peer
from common import (
    QUIET_WAIT,
    check,
    corral_cluster,
    descendants,
    diagnose_hangs,
    final_process_check,
    latency,
    machine_load,
    print_table,
    timed,
    verdict,
    write_results,
)

SIZES_MB = (100, 1000)
ROUNDS = {100: 5, 1000: 3}
LATENCY_ROUNDS = 1000
TIMEOUT = 120.0


def one() -> int:
    return 1


def median_mbps(size_mb: int, step: Callable[[], object]) -> float:
    """MB/s of one transfer of ``size_mb`` (raw pyzmq): median of ROUNDS after one warm-up."""
    step()
    return size_mb / statistics.median(timed(step)[0] for _ in range(ROUNDS[size_mb]))


class Peer:
    """One framework under test: ``push(size)``/``pull(size)`` move ``arrays[size]`` and back,
    ``settle()`` runs untimed after each transfer, ``noop()`` is one no-op round trip."""

    def __init__(self, name: str, sizes: tuple[int, ...]) -> None:
        self.name = name
        self.sizes = sizes
        self.times: dict[str, list[float]] = {}

    def push(self, size: int) -> object:
        raise NotImplementedError

    def pull(self, size: int) -> np.ndarray:
        raise NotImplementedError

    def settle(self) -> None:
        return None

    def noop(self) -> object:
        return None

    def record(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def figures(self) -> dict[str, float]:
        return {
            key: int(key.split("_")[1].removesuffix("MB")) / statistics.median(times)
            for key, times in self.times.items()
        }


class CorralPeer(Peer):
    def __init__(self, name: str, sizes: tuple[int, ...], client: Any, arrays: Any) -> None:
        super().__init__(name, sizes)
        self.client = client
        self.view = client[client.ids[0]]
        self.arrays = arrays

    def push(self, size: int) -> object:
        return self.view.push({"a": self.arrays[size]}, block=False).get(TIMEOUT)

    def pull(self, size: int) -> np.ndarray:
        return self.view.pull("a", block=False).get(TIMEOUT)  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Purge the Hub's copies, so its store does not grow by the array every round."""
        self.client.wait(timeout=TIMEOUT)
        self.client.purge_results("all")
        self.client.results.clear()

    def noop(self) -> object:
        return self.view.apply_async(one).get(TIMEOUT)


class RayPeer(Peer):
    def __init__(self, holder: Any, arrays: Any) -> None:
        super().__init__("ray", SIZES_MB)
        import ray

        self.ray = ray
        self.holder = holder
        self.arrays = arrays

    def push(self, size: int) -> object:
        return self.ray.get(self.holder.set.remote(self.arrays[size]), timeout=TIMEOUT)

    def pull(self, size: int) -> np.ndarray:
        return self.ray.get(self.holder.get.remote(), timeout=TIMEOUT)  # type: ignore[no-any-return]


@contextmanager
def ray_holder(largest: int) -> Iterator[Any]:
    """A local Ray (2 CPUs, no dashboard) and one actor that keeps what it is given. Starting
    Ray on a loaded machine can time out: up to three attempts."""
    import ray

    for attempt in range(3):
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=3 * largest + (1 << 30),
            )
            break
        except Exception as err:  # Ray raises a bare Exception when its node times out
            print(f"Ray did not start ({err}); attempt {attempt + 1} of 3", file=sys.stderr)
            ray.shutdown()
    else:
        raise RuntimeError("Ray did not start in three attempts")
    try:

        @ray.remote
        class Holder:
            def __init__(self) -> None:
                self.array: Any = None

            def set(self, array: Any) -> bool:
                self.array = array
                return True

            def get(self) -> Any:
                return self.array

        holder = Holder.remote()  # type: ignore[attr-defined]
        ray.get(holder.set.remote(None), timeout=TIMEOUT)
        yield holder
    finally:
        ray.shutdown()
        # Ray's node processes exit on their own some seconds after shutdown: wait for them
        # (bounded), so that the final process check sees only what really stayed
        _, alive = psutil.wait_procs(
            [p for p in descendants() if "ray" in " ".join(p.cmdline())], timeout=60
        )
        for process in alive:
            print(f"Ray left {process.pid} running after 60 s: killed", file=sys.stderr)
            process.kill()


def run_side_by_side(peers: list[Peer], arrays: dict[int, np.ndarray]) -> None:
    """Every peer checked once per size, then ROUNDS[size] rounds in which each peer (in a
    rotating order) pushes then pulls: the machine's load falls on all of them alike."""
    for size in SIZES_MB:
        active = [peer for peer in peers if size in peer.sizes]
        for peer in active:
            peer.push(size)
            check(np.array_equal(peer.pull(size), arrays[size]), f"{peer.name} {size} MB")
            peer.settle()
        for round in range(ROUNDS[size]):
            for peer in active[round % len(active) :] + active[: round % len(active)]:
                for kind in ("push", "pull"):
                    seconds, _ = timed(lambda: getattr(peer, kind)(size))  # noqa: B023
                    peer.record(f"{kind}_{size}MB", seconds)
                    peer.settle()
        print(f"{size} MB done", file=sys.stderr)


def latency_side_by_side(peers: list[Peer]) -> dict[str, dict[str, float]]:
    """No-op round trips in blocks of 100, alternating between the peers."""
    times: dict[str, list[float]] = {peer.name: [] for peer in peers}
    for peer in peers:
        latency(peer.noop, 10)
    for _ in range(LATENCY_ROUNDS // 100):
        for peer in peers:
            for _ in range(100):
                seconds, _ = timed(peer.noop)
                times[peer.name].append(seconds)
    return {
        name: {
            "median_us": statistics.median(values) * 1e6,
            "p90_us": statistics.quantiles(values, n=10)[-1] * 1e6,
        }
        for name, values in times.items()
    }


def repeat(step: Callable[[], object], times: int) -> None:
    for _ in range(times):
        step()


def hook_overhead() -> dict[str, Any]:
    """What the fast path adds to one small request and its reply, in-process (no sockets, so
    the machine's load hardly shows): the hooks a message below the threshold passes through
    (``reader_metadata`` and ``export`` at the client, ``resolve`` and ``export_reply`` at the
    engine, ``resolve`` at the client), beside what one such message costs anyway (build, sign,
    serialize, verify, parse). Best of 20 blocks of 1000, in microseconds."""
    from corral.protocol.serialize import pack_apply_message
    from corral.protocol.session import Session
    from corral.protocol.shm import Settings
    from corral.sharedmem import SharedMemory, cluster_prefix, host_identity

    host = host_identity()
    check(host is not None, "a usable /dev/shm")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as folder:
        shm = SharedMemory(Settings(cluster_prefix(folder), str(host)))
        session = Session(os.urandom(32))
        buffers = pack_apply_message(one, (b"x" * 1024,), {})
        sample = session.feed(
            session.serialize(
                session.msg("apply_request", {}, metadata=shm.reader_metadata(), buffers=buffers)
            )
        )

        def message() -> object:
            msg = session.msg("apply_request", {}, metadata={}, buffers=buffers)
            return session.feed(session.serialize(msg))

        def hooks() -> object:
            shm.reader_metadata()
            frames, refs = shm.export(buffers)
            check(not refs, "nothing above the threshold")
            shm.resolve(sample)
            shm.export_reply(sample.metadata, buffers, hub_reads=True)
            return shm.resolve(sample)

        blocks: dict[str, list[float]] = {"message": [], "hooks": []}
        for _ in range(20):
            for name, step in (("message", message), ("hooks", hooks)):
                seconds, _ = timed(functools.partial(repeat, step, 1000))
                blocks[name].append(seconds / 1000 * 1e6)
        shm.close()
    return {name: min(values) for name, values in blocks.items()}


# ---------------------------------------------------------------- raw pyzmq


def measure_raw(arrays: dict[int, np.ndarray]) -> dict[str, Any]:
    import zmq

    result: dict[str, Any] = {}
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.linger = b.linger = 0
    a.connect(f"tcp://127.0.0.1:{b.bind_to_random_port('tcp://127.0.0.1')}")
    for size, array in arrays.items():

        def transfer(array: np.ndarray = array) -> np.ndarray:
            a.send(memoryview(array), copy=False)
            return np.frombuffer(b.recv(copy=False).buffer, dtype=array.dtype)

        check(np.array_equal(transfer(), array), "raw PAIR transfer")
        result[f"pair_{size}MB"] = median_mbps(size, transfer)
    a.close()
    b.close()
    context.term()
    with raw_peer(via_proxy=True) as req:
        for size, array in arrays.items():

            def push(array: np.ndarray = array) -> object:
                req.send(memoryview(array), copy=False)
                return req.recv()

            def pull(array: np.ndarray = array) -> np.ndarray:
                req.send(b"pull")
                return np.frombuffer(req.recv(copy=False).buffer, dtype=array.dtype)

            push()
            check(np.array_equal(pull(), array), "raw proxy pull")
            result[f"proxy_push_{size}MB"] = median_mbps(size, push)
            result[f"proxy_pull_{size}MB"] = median_mbps(size, pull)
    return result


# ---------------------------------------------------------------- main


ON, OFF = "corral, shm, db=memory", "corral, sockets (--shm-threshold 0), db=memory"
CORRAL: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "corral, shm (defaults: sqlite store)": (SIZES_MB, {}),
    ON: (SIZES_MB, {"db": "memory"}),
    OFF: (SIZES_MB, {"db": "memory", "controller_args": ["--shm-threshold", "0"]}),
}


def main() -> None:
    diagnose_hangs()
    arrays = {size: np.random.default_rng(size).random(size * 1_000_000 // 8) for size in SIZES_MB}
    results: dict[str, Any] = {"sizes_MB": SIZES_MB, "rounds": ROUNDS}
    results["load_before"] = machine_load("before", wait=QUIET_WAIT / 6)  # it will not be quiet
    started = time.monotonic()
    peers: list[Peer] = []
    with ExitStack() as stack:
        try:
            holder = stack.enter_context(ray_holder(max(a.nbytes for a in arrays.values())))
            peers.append(RayPeer(holder, arrays))
        except (ImportError, RuntimeError) as err:
            results["ray"] = {"error": f"Ray could not be measured: {err}"}
        for name, (sizes, options) in CORRAL.items():
            running = stack.enter_context(corral_cluster(1, **options))
            peers.append(CorralPeer(name, sizes, running.client, arrays))
        print("measuring side by side ...", file=sys.stderr)
        run_side_by_side(peers, arrays)
        latencies = latency_side_by_side([p for p in peers if p.name in CORRAL])
    for peer in peers:
        results[peer.name] = peer.figures()
        if peer.name in CORRAL:
            results[peer.name]["latency"] = latencies[peer.name]
    print("measuring raw pyzmq ...", file=sys.stderr)
    results["raw"] = measure_raw(arrays)
    results["hook_overhead_us"] = hook_overhead()
    results["load_after"] = machine_load("after")
    results["seconds"] = time.monotonic() - started

    header = [""] + [f"{kind} {size} MB" for size in SIZES_MB for kind in ("push", "pull")]
    rows: list[list[Any]] = []
    for name in [*CORRAL, "ray"]:
        r = results[name]
        if "error" in r:
            rows.append([name, r["error"]])
            continue
        rows.append([name] + [r.get(f"{k}_{s}MB") for s in SIZES_MB for k in ("push", "pull")])
    raw = results["raw"]
    rows.append(
        ["raw pyzmq PAIR, one process"] + [raw[f"pair_{s}MB"] for s in SIZES_MB for _ in "12"]
    )
    rows.append(
        ["raw pyzmq via C proxy process"]
        + [raw[f"proxy_{k}_{s}MB"] for s in SIZES_MB for k in ("push", "pull")]
    )
    print_table(
        f"push/pull to one engine (one actor for Ray), MB/s, median; {os.cpu_count()} cores",
        header,
        rows,
    )
    on, off = results[ON], results[OFF]
    print_table(
        f"no-op round trip on one engine, us (median and p90 of {LATENCY_ROUNDS})",
        ["", "median", "p90"],
        [
            [name, results[name]["latency"]["median_us"], results[name]["latency"]["p90_us"]]
            for name in CORRAL
        ],
    )
    hooks = results["hook_overhead_us"]
    print(
        f"\nin-process, small request: the fast path's hooks {hooks['hooks']:.1f} us per "
        f"request and reply; one such message alone costs {hooks['message']:.1f} us"
    )
    targets: dict[str, bool] = {}
    if "error" not in results["ray"]:
        ray = results["ray"]
        for size in SIZES_MB:
            for kind in ("push", "pull"):
                key = f"{kind}_{size}MB"
                targets[f"{kind} {size} MB >= Ray"] = on[key] >= ray[key]
    ratio = on["latency"]["median_us"] / off["latency"]["median_us"]
    targets["latency below the threshold within 10% of the socket path"] = ratio <= 1.10
    results["latency_ratio_shm_on_vs_off"] = ratio
    results["targets"] = targets
    print("\ntargets: " + "; ".join(f"{name}: {verdict(ok)}" for name, ok in targets.items()))
    print(f"machine: load {results['load_before']} before, {results['load_after']} after")
    results["left_behind_at_end"] = final_process_check()
    write_results("shm", results)


if __name__ == "__main__":
    main()
