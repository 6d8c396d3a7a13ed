"""The relay's edge: QUIC connections (:mod:`wzp.net.quic`) driving the pure :class:`Relay`.

The room of a connection is its TLS server name (SNI, SPEC 8.1). Each connection's
datagrams and messages go to the core with ``time.monotonic()`` as ``now``; its actions
are executed here: datagrams go out with :meth:`WzpConnection.send_datagram`, which drops
(and here counts, in ``send_drops``) a copy a member cannot take now without ever waiting,
so a slow or flooded member never slows the others; messages with ``send_message``; a
close waits (at most :data:`CLOSE_GRACE_S`) until the ``Error`` sent just before it has
been acknowledged. A task ticks the core every :data:`TICK_S` (join timeout, floor).

Relay connections use :class:`RelayCongestionControl` (``"wzp-relay"``): the voice floor
of :class:`wzp.net.quic.VoiceCongestionControl` raised to what a member of a full room
receives. ``Ping`` is answered by the core (``auto_pong`` off), so that a Ping before the
Join closes the connection as SPEC 8.2 asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aioquic.quic.congestion.base import register_congestion_control

from wzp.crypto.identity import Identity, fingerprint_text
from wzp.daemon.control import ControlServer, someone_listens
from wzp.daemon.identity_store import SeedFileError, load_or_create_seed
from wzp.daemon.notify import Notifier
from wzp.daemon.startup import identity_problem, listen_error
from wzp.net.quic import VoiceCongestionControl, WzpConnection, WzpServer, serve_wzp
from wzp.proto.signal import Message, UnknownMessage

from .config import EXIT_CONFIG, ConfigError, RelayConfig, load_config
from .metrics import MetricsServer, RelayCollector, make_registry
from .room import Action, ConnId, Forward, Relay, Send

__all__ = [
    "CLOSE_GRACE_S",
    "EXIT_CONFIG",
    "RECV_BUFFER_BYTES",
    "RELAY_CONGESTION_CONTROL",
    "TICK_S",
    "RelayCongestionControl",
    "RelayServer",
    "run_relay",
]

log = logging.getLogger(__name__)

TICK_S = 0.05
CLOSE_GRACE_S = 2.0
#: receive buffer asked for each listening socket
RECV_BUFFER_BYTES = 1 << 20
RELAY_CONGESTION_CONTROL = "wzp-relay"


class RelayCongestionControl(VoiceCongestionControl):
    """The voice floor for a relay member: up to 1000 full-size packets per RTT-second
    (a full room of 8 members at 50 packets/s each sends one member 350 packets/s)."""

    floor_packets_per_s = 1000.0


register_congestion_control(RELAY_CONGESTION_CONTROL, RelayCongestionControl)


class RelayServer:
    """A listening relay. ``await start()``, then ``await close()``."""

    def __init__(
        self,
        config: RelayConfig,
        identity: Identity,
        *,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        control: bool = True,
    ) -> None:
        self.config = config
        self.identity = identity
        self.relay = Relay(
            identity.fingerprint,
            config.rooms,
            open_rooms=config.open_rooms,
            max_pending=config.max_pending,
        )
        self.notifier = notifier
        self._clock = clock
        self._conns: dict[ConnId, WzpConnection] = {}
        self._last_stream: dict[ConnId, int] = {}
        self._ids = itertools.count(1)
        self._server: WzpServer | None = None
        self._control: ControlServer | None = (
            ControlServer(config.control_socket) if control else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._started = 0.0
        self.send_errors = 0
        self.metrics: MetricsServer | None = None
        """The Prometheus endpoint, when the config has ``metrics`` (after start)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen. An ``OSError`` says which port or socket could not be had."""
        try:
            self._server = await serve_wzp(
                list(self.config.listen),
                self.config.port,
                self.identity,
                self._on_connection,
                congestion_control=RELAY_CONGESTION_CONTROL,
            )
        except OSError as exc:
            why = listen_error(exc, self.config.listen, self.config.port, "another wzp relay")
            if why is None:
                raise
            raise OSError(why) from exc
        for sock in self._server.sockets:
            # room for bursts (a flooding member, many members at once): the kernel caps
            # the request at net.core.rmem_max
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        try:
            if self.config.metrics is not None:
                collector = RelayCollector(
                    self.relay,
                    clock=self._clock,
                    send_errors=lambda: self.send_errors,
                    handshakes=self.handshakes,
                )
                self.metrics = MetricsServer(make_registry(collector), *self.config.metrics)
                try:
                    await self.metrics.start()
                except OSError as exc:
                    self.metrics = None
                    raise OSError(_metrics_error(exc, *self.config.metrics)) from exc
            if self._control is not None:
                self._control.handle("status", self._ctl_status)
                self._control.handle("identity", self._ctl_identity)
                await self._control.start()
        except BaseException:
            self._server.close()
            if self.metrics is not None:
                await self.metrics.close()
            raise
        self._started = self._clock()
        self._tick_task = asyncio.get_running_loop().create_task(self._ticker())
        log.info(
            "wzp relay %s listening on %s",
            self.identity.fingerprint_text,
            ", ".join(map(str, self._server.addresses)),
        )

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.metrics is not None:
            await self.metrics.close()
        if self._control is not None:
            await self._control.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.port

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        return self._server.addresses if self._server is not None else []

    def _sockets(self) -> list[socket.socket]:
        return self._server.sockets if self._server is not None else []

    def handshakes(self) -> dict[str, int]:
        """QUIC handshakes in progress, and what the listening sockets refused before any
        connection existed (too many handshakes at once, forged tokens, not QUIC)."""
        if self._server is None:
            return {"in_progress": 0, "retries": 0, "bad_tokens": 0, "not_quic": 0}
        c = self._server.counters
        return {
            "in_progress": self._server.half_open,
            "retries": c.retries,
            "bad_tokens": c.bad_tokens,
            "not_quic": c.not_quic,
        }

    def status(self) -> dict[str, Any]:
        """Rooms, members (slot, alias, fingerprint), counters: for ``wzp relay`` status."""
        return {
            "fingerprint": self.identity.fingerprint_text,
            "listen": [
                f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}" for a in self.addresses
            ],
            "uptime_s": round(self._clock() - self._started, 1) if self._started else 0.0,
            "connections": len(self._conns),
            "metrics": f"http://{self.metrics.address}/metrics" if self.metrics else None,
            "recv_buffer_bytes": [
                s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in self._sockets()
            ],
            **self.relay.status(),
            "counters": self.relay.counters.as_dict(),
            "send_errors": self.send_errors,
            "handshakes": self.handshakes(),
        }

    async def _ctl_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _ctl_identity(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"fingerprint": self.identity.fingerprint_text}

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._execute(self.relay.tick(self._clock()))
            except Exception:  # a bug here must not stop the join timeout for good
                log.exception("relay tick failed")

    # ------------------------------------------------------------------ connections

    def _on_connection(self, conn: WzpConnection) -> None:
        cid = next(self._ids)
        self._conns[cid] = conn
        conn.auto_pong = False
        conn.on_datagram = lambda data: self._on_datagram(cid, data)
        conn.on_message = lambda msg: self._on_message(cid, msg)
        conn.on_close = lambda _conn: self._on_close(cid)
        log.info(
            "connection %d for room %r from %s",
            cid,
            conn.server_name,
            fingerprint_text(conn.peer_fingerprint) if conn.peer_fingerprint else "?",
        )
        self._execute(
            self.relay.connect(cid, conn.server_name, self._clock(), conn.peer_fingerprint)
        )

    def _on_datagram(self, cid: ConnId, data: bytes) -> None:
        result = self.relay.on_datagram(cid, data, self._clock())
        if type(result) is not Forward:
            return
        conns = self._conns
        counters = self.relay.counters
        for target in result.targets:
            conn = conns.get(target)
            if conn is None or not conn.send_datagram(data):
                counters.send_drops += 1
                counters.send_drop_bytes += len(data)
        if result.actions:
            self._execute(result.actions)

    def _on_message(self, cid: ConnId, msg: Message | UnknownMessage) -> None:
        self._execute(self.relay.on_message(cid, msg, self._clock()))

    def _on_close(self, cid: ConnId) -> None:
        self._conns.pop(cid, None)
        self._last_stream.pop(cid, None)
        actions = self.relay.leave(cid, self._clock())
        log.info("connection %d ended", cid)
        self._execute(actions)

    def _execute(self, actions: Iterable[Action]) -> None:
        for action in actions:
            conn = self._conns.get(action.conn)
            if conn is None:
                continue
            if isinstance(action, Send):
                try:
                    self._last_stream[action.conn] = conn.send_message(action.msg)
                except ConnectionError:
                    self.send_errors += 1
            else:
                log.info("closing connection %s: %s", action.conn, action.reason)
                task = asyncio.get_running_loop().create_task(
                    self._close_after_delivery(action.conn, conn, action.reason)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _close_after_delivery(self, cid: ConnId, conn: WzpConnection, reason: str) -> None:
        stream = self._last_stream.get(cid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE_S
        while (
            stream is not None
            and conn.is_connected
            and not conn.message_delivered(stream)
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.01)
        conn.close(reason_phrase=reason)


def _metrics_error(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"metrics: TCP port {port} on {host} is in use (another program)"
    return f"metrics: cannot listen on TCP port {port} on {host}: {exc.strerror or exc}"


# --------------------------------------------------------------------- the service


async def run_relay(config_path: Path, *, stop: asyncio.Event | None = None) -> int:
    """``wzp relay``: run until SIGTERM/SIGINT (or ``stop``); the exit status."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"wzp relay: configuration refused:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if someone_listens(config.control_socket):
        print(
            f"wzp relay: another wzp relay is running (control socket {config.control_socket} "
            "answers)",
            file=sys.stderr,
        )
        return 1
    try:
        identity, created = load_or_create_seed(config.identity)
    except (SeedFileError, OSError) as exc:
        text, status = identity_problem(exc)
        print(f"wzp relay: identity {config.identity}: {text}", file=sys.stderr)
        return status
    if created:
        log.info("created a new relay identity at %s", config.identity)
    notifier = Notifier()
    server = RelayServer(config, identity, notifier=notifier)
    try:
        await server.start()
    except OSError as exc:
        print(f"wzp relay: cannot start: {exc}", file=sys.stderr)
        return 1
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    # handsets pin this fingerprint (stdout: `wzp relay` prints it for the operator too)
    print(f"wzp relay fingerprint: {identity.fingerprint_text}", flush=True)
    rooms = ", ".join(sorted(config.rooms)) or "none"
    notifier.ready(f"fingerprint {identity.fingerprint_text}; rooms: {rooms}")
    try:
        interval = notifier.watchdog_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval if interval else 3600.0)
            if interval:
                notifier.watchdog()
    finally:
        notifier.stopping()
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.close()
    return 0
