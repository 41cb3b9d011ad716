"""The dashboard's web server: pages, a JSON API, live updates over a WebSocket, actions.

One asyncio process beside the controller (``corral dashboard``, started by ``corral start``):
it is a client of the Hub (:mod:`.link`), keeps a :class:`~.model.ClusterModel` current once
per tick, pushes each tick's update to every open page, and answers history searches with one
page of the store at a time. Every request passes the :class:`~.auth.Gate` first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiohttp import WSMsgType, web

from corral.controller.store.base import MAX_PAGE
from corral.errors import CorralError
from corral.protocol.connection_files import CLIENT_FILE, DASHBOARD_FILE, ENGINE_FILE
from corral.protocol.session import Message

from . import details
from .auth import COOKIE, Gate, derive_token
from .link import History, HubLink
from .model import ClusterModel

log = logging.getLogger("corral.dashboard")

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class DashboardConfig:
    """Where the cluster is and where to listen; ``interval`` is the update period (s)."""

    cluster_path: Path
    ip: str = "127.0.0.1"
    port: int = 0
    interval: float = 1.0


class Dashboard:
    """The server; :meth:`start`, then :meth:`serve` until :meth:`stop`."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.path = config.cluster_path
        self.link = HubLink(
            self.path / CLIENT_FILE,
            on_notification=self._on_notification,
            on_stats=self._on_stats,
            timeout=max(5.0, config.interval * 5),
        )
        self.model = ClusterModel(self.link.cluster_id)
        self.history = History(self.link)
        self.gate = Gate(derive_token(self.link.key))
        self.sockets: set[web.WebSocketResponse] = set()
        self.children: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.port = 0
        self._stopped = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tick: asyncio.Task[None] | None = None
        self._index = (STATIC / "index.html").read_text().replace("{{csrf}}", self.gate.csrf)

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/tasks", self._tasks)
        app.router.add_get("/api/task/{msg_id}", self._task)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/api/task/{msg_id}/abort", self._abort)
        app.router.add_post("/api/engine/{engine_id}/shutdown", self._shutdown)
        app.router.add_post("/api/engine/{engine_id}/restart", self._restart)
        return app

    async def start(self) -> str:
        """Connect to the Hub, listen, advertise the URL; return it."""
        self.link.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.ip, self.config.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        host = f"[{self.config.ip}]" if ":" in self.config.ip else self.config.ip
        self.url = f"http://{host}:{self.port}/?token={self.gate.token}"
        self._advertise()
        self._tick = asyncio.get_running_loop().create_task(self._tick_loop())
        return self.url

    async def serve(self) -> None:
        await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.link.close()
        self.history.close()
        (self.path / DASHBOARD_FILE).unlink(missing_ok=True)
        self._advertise(remove=True)
        self._reap()

    def _advertise(self, remove: bool = False) -> None:
        """Write ``dashboard.json``, and the ``dashboard`` field of the client connection
        file (again when a restarted controller rewrote that file without it).

        The controller owns the connection file: the field is added only if the file did
        not change while it was being rewritten here, and only while the controller that
        wrote it runs, so a stale copy never replaces the controller's own (nor brings back
        a file it removed when it stopped).
        """
        client_file = self.path / CLIENT_FILE
        try:
            before = client_file.read_bytes()
            info = json.loads(before)
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and (info.get("dashboard") != self.url or remove):
            if remove:
                info.pop("dashboard", None)
            else:
                info["dashboard"] = self.url
            pid = info.get("controller_pid")
            if isinstance(pid, int) and psutil.pid_exists(pid):
                _replace_if_unchanged(client_file, before, json.dumps(info, indent=2))
        if not remove and not (self.path / DASHBOARD_FILE).exists():
            record = {"url": self.url, "port": self.port, "pid": os.getpid()}
            _replace_if_unchanged(self.path / DASHBOARD_FILE, None, json.dumps(record))

    # ------------------------------------------------------------ the tick

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await self.refresh()
            self._reap()
            self._advertise()
            update = self.model.update(time.monotonic())
            if self.sockets:
                update["sent"] = time.time()
                await self._broadcast(orjson.dumps(update).decode())
            await asyncio.sleep(max(0.0, self.config.interval - (loop.time() - began)))

    async def refresh(self) -> None:
        """Ask the Hub for the live state and feed the model."""
        try:
            reply = await self.link.request("status_request", {"since": self.model.seq})
        except CorralError as err:
            if self.model.connected:
                log.warning("dashboard: lost the Hub: %s", err)
            self.model.on_disconnected()
            return
        self.model.on_status(reply.content or {}, time.monotonic(), time.time())

    async def _broadcast(self, text: str) -> None:
        for ws in list(self.sockets):
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                self.sockets.discard(ws)

    def _on_notification(self, msg: Message) -> None:
        content = msg.content or {}
        engine_id = content.get("id")
        if not isinstance(engine_id, int):
            return
        if msg.msg_type == "registration_notification":
            self.model.on_registration(engine_id, str(content.get("uuid", "")), time.monotonic())
        elif msg.msg_type == "unregistration_notification":
            self.model.on_unregistration(engine_id, time.monotonic())

    def _on_stats(self, msg: Message) -> None:
        topic = msg.idents[0] if msg.idents else b""
        try:
            engine_id = int(bytes(topic).partition(b".")[2])
        except ValueError:
            return
        self.model.on_stats(engine_id, msg.content or {}, time.monotonic())

    # ------------------------------------------------------------ gate

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        verdict = self.gate.check(
            request.method,
            request.query,
            request.cookies,
            request.headers,
            request.host,
        )
        if not verdict.allowed:
            log.info("dashboard: refused %s %s: %s", request.method, request.path, verdict.reason)
            return web.Response(status=403, text="403: Forbidden", headers=SECURITY_HEADERS)
        if verdict.set_cookie and request.path == "/":
            # keep the token in a cookie and out of the address bar (and of its history)
            response: web.StreamResponse = web.Response(status=302, headers={"Location": "/"})
        else:
            response = await handler(request)
        if isinstance(response, web.WebSocketResponse):
            return response  # already sent: its headers cannot change
        if verdict.set_cookie:
            response.set_cookie(COOKIE, self.gate.token, httponly=True, samesite="Strict", path="/")
        response.headers.update(SECURITY_HEADERS)
        return response

    # ------------------------------------------------------------ pages

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._index, content_type="text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _snapshot(self, request: web.Request) -> web.Response:
        return _json(self.model.snapshot(time.monotonic(), time.time()))

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        await ws.send_str(orjson.dumps(self.model.snapshot(time.monotonic(), time.time())).decode())
        self.sockets.add(ws)
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.discard(ws)
        return ws

    async def _tasks(self, request: web.Request) -> web.Response:
        """One page of the history: ``q`` (a db_query dict as JSON) narrowed by ``msg_id``,
        ``status`` and ``engine``; ``skip`` and ``limit``; newest first."""
        try:
            query = search_query(request.query)
            skip = int(request.query.get("skip", "0"))
            limit = min(int(request.query.get("limit", str(PAGE_SIZE))), MAX_PAGE)
        except (ValueError, TypeError) as err:
            return _json({"error": str(err)}, status=400)
        try:
            records, total = await self.history.page(query, details.ROW_KEYS, limit, skip)
        except CorralError as err:
            return _json({"error": str(err)}, status=400)
        rows = [details.row(record) for record in records]
        return _json({"rows": rows, "total": total, "skip": skip, "limit": limit})

    async def _task(self, request: web.Request) -> web.Response:
        msg_id = request.match_info["msg_id"]
        try:
            record, buffers = await self.history.record(msg_id)
        except CorralError as err:
            return _json({"error": str(err)}, status=400)
        if record is None:
            return _json({"error": f"no task {msg_id} in the store"}, status=404)
        return _json(details.task_page(record, buffers))

    # ------------------------------------------------------------ actions

    def _alive(self) -> list[Any]:
        return [e for e in self.model.engines.values() if e.state in ("idle", "busy")]

    async def _abort(self, request: web.Request) -> web.Response:
        """Abort a task wherever it is: every live engine is told (as clients do), so a
        load-balanced task still on its way is caught too."""
        msg_id = request.match_info["msg_id"]
        for engine in self._alive():
            await self.link.send_control(engine.uuid, "abort_request", {"msg_ids": [msg_id]})
        return _json({"ok": True, "engines": len(self._alive())})

    def _engine(self, request: web.Request) -> Any:
        try:
            engine = self.model.engines.get(int(request.match_info["engine_id"]))
        except ValueError:
            engine = None
        if engine is None:
            raise web.HTTPNotFound(text="no such engine")
        return engine

    async def _shutdown(self, request: web.Request) -> web.Response:
        engine = self._engine(request)
        if engine.state not in ("idle", "busy"):
            return _json({"error": f"engine {engine.id} is {engine.state}"}, status=409)
        await self.link.send_control(engine.uuid, "shutdown_request", {})
        return _json({"ok": True})

    async def _restart(self, request: web.Request) -> web.Response:
        """Stop the engine (if it runs) and start a fresh one here, under this dashboard.

        Only an engine of this machine can be restarted: its successor is started with this
        machine's engine connection file and ends when the dashboard does.
        """
        engine = self._engine(request)
        if engine.hostname and engine.hostname != socket.gethostname():
            return _json(
                {"error": f"engine {engine.id} runs on {engine.hostname}, not here"}, status=409
            )
        if engine.state in ("idle", "busy"):
            await self.link.send_control(engine.uuid, "shutdown_request", {})
        self.model.mark_restarting(engine.id, time.monotonic())
        self._spawn_engine()
        return _json({"ok": True})

    def _spawn_engine(self) -> None:
        index = len(self.children)
        log_path = self.path / f"engine-dashboard-{os.getpid()}-{index}.log"
        with open(log_path, "ab") as log_file:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "corral",
                    "engine",
                    "--file",
                    str(self.path / ENGINE_FILE),
                    "--log-level",
                    "WARNING",
                    "--owner-pid",
                    str(os.getpid()),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.children.append(child)

    def _reap(self) -> None:
        self.children = [child for child in self.children if child.poll() is None]


def search_query(params: Any) -> dict[str, Any]:
    """The db_query of a history search (raises ValueError on a malformed one)."""
    text = (params.get("q") or "").strip()
    query = json.loads(text) if text else {}
    if not isinstance(query, dict):
        raise ValueError('the query must be a JSON object, like {"status": "error"}')
    msg_id = (params.get("msg_id") or "").strip()
    if msg_id:
        query["msg_id"] = msg_id
    status = (params.get("status") or "").strip()
    if status:
        query["status"] = status
    engine = (params.get("engine") or "").strip()
    if engine:
        query["engine_id"] = int(engine)
    return query


def _replace_if_unchanged(path: Path, expected: bytes | None, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600, atomically) unless the file no longer holds
    ``expected`` (None: whatever it holds); the temporary file is this process's own."""
    tmp = path.with_name(f".{path.name}.dashboard-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    try:
        if expected is not None and path.read_bytes() != expected:
            return
        os.replace(tmp, path)
    except OSError:
        return
    finally:
        tmp.unlink(missing_ok=True)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


async def run_dashboard(config: DashboardConfig) -> int:
    """Serve until SIGINT/SIGTERM; print the URL once listening."""
    import signal

    dashboard = Dashboard(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, dashboard.stop)
    try:
        url = await dashboard.start()
        print(f"dashboard of cluster {dashboard.model.cluster_id}: {url}", flush=True)
        await dashboard.serve()
    finally:
        await dashboard.close()
    return 0
