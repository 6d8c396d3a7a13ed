"""An in-process lossy UDP proxy: the real-socket edge of the seeded link model.

:class:`UdpLossyProxy` relays UDP between **one** client and **one** upstream server
through two :class:`wzp.sim.link.Link` instances, one per direction, inside the caller's
asyncio event loop (no root, no thread, no subprocess)::

    client ──► listen socket ─[up link]──► upstream socket ──► server
    client ◄── listen socket ◄─[down link]─ upstream socket ◄── server

* The *listen* socket is bound to an explicit numeric address (``127.0.0.1`` by default,
  or ``::1``), port 0 by default; :attr:`UdpLossyProxy.address` reports the chosen port.
  The client sends to it; replies go back to the client's **last-seen** address.
* The *upstream* socket is ``connect()``-ed to the server, so the server sees the proxy as
  its client, the kernel filters out datagrams from anyone else, and ICMP errors (server
  not listening) surface as :attr:`DirectionStats.socket_errors`.

Every decision about a datagram (lost at random or in a burst, tail-dropped by the
bottleneck queue, blacked out, delayed, jittered, reordered, duplicated) is taken by
:class:`~wzp.sim.link.Link`; this module only reads sockets, feeds each datagram to the
link with ``now`` = seconds since :meth:`UdpLossyProxy.start` (the event loop's monotonic
clock), and writes datagrams out at their arrival times with one ``loop.call_at`` timer
per direction, in arrival order. Nothing busy-loops or sleeps.

**Time base.** ``now`` (:attr:`UdpLossyProxy.now`) is proxy time: seconds since start.
``LinkConfig.blackouts`` windows are in proxy time too.

**Changing the config mid-run** (:meth:`UdpLossyProxy.set_config`,
:meth:`UdpLossyProxy.blackout`). A :class:`Link` has a fixed config, so a change starts a
new link (an *epoch*) for that direction; datagrams already in flight in the old link
still arrive at their scheduled times, new datagrams go through the new link. The new
link's seed is derived from the direction's seed and the epoch number, so a run with the
same seed and the same sequence of changes is repeatable; but the new link starts with an
empty bottleneck queue and fresh random streams (its loss pattern does not continue the
old one). A direction whose current link has seen no datagram yet is simply reconfigured
in place, keeping its seed (so configuring before :meth:`~UdpLossyProxy.start` is the same
as passing the config to the constructor).

**Seeds.** Epoch 0 uses the seeds of :func:`wzp.sim.link.link_pair` (labels ``"a->b"``
for client→server, ``"b->a"`` for server→client), so a proxy and a pure simulation built
from the same ``seed`` and configs lose the same datagrams (by index within a direction).

**Not modelled.** The proxy reads at most a batch of datagrams per readiness callback;
if the event loop is starved long enough for a kernel receive buffer to overflow, the
kernel drops datagrams that the link never sees (the proxy asks for a 4 MiB receive
buffer to make this unlikely). Event-loop lag delays deliveries; the worst lag is
reported as :attr:`DirectionStats.max_lateness_s`. In-flight datagrams are discarded by
:meth:`~UdpLossyProxy.close`.

Needs an event loop with ``add_reader`` (any selector loop or uvloop; not Windows'
proactor loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from wzp.sim.link import Link, LinkConfig, LinkStats, derive_seed

__all__ = ["DirectionStats", "ProxyStats", "UdpLossyProxy"]

DirectionName = Literal["up", "down"]
"""``"up"``: client → server; ``"down"``: server → client."""

_DIRECTIONS: tuple[DirectionName, DirectionName] = ("up", "down")
_SEED_LABELS = {"up": "a->b", "down": "b->a"}  # as wzp.sim.link.link_pair
_READ_BATCH = 256  # datagrams read per readiness callback, to stay fair to other callbacks
_RCVBUF = 4 * 1024 * 1024  # requested; the kernel caps it (net.core.rmem_max)
_MAX_DATAGRAM = 65536


@dataclass
class DirectionStats(LinkStats):
    """A snapshot of one direction's counters, summed over all its links (epochs): the
    link's counters (:class:`~wzp.sim.link.LinkStats`) plus what the sockets saw.

    Conservation::

        sent + duplicated == lost + delivered + in_flight
        delivered == forwarded + send_failed
    """

    forwarded: int = 0
    """Datagrams actually written to the outgoing socket."""
    forwarded_bytes: int = 0
    """Payload bytes actually written to the outgoing socket."""
    send_failed: int = 0
    """Released by the link but not written: no client address yet, socket buffer full,
    or a socket error on send."""
    ignored: int = 0
    """Received but not offered to the link (server datagrams before any client datagram)."""
    socket_errors: int = 0
    """Errors reported asynchronously on the outgoing socket (e.g. ICMP port unreachable)."""
    in_flight: int = 0
    """Datagrams scheduled but not yet released (discarded by ``close``)."""
    max_lateness_s: float = 0.0
    """Worst delay between a datagram's scheduled arrival and its actual write (loop lag)."""
    epochs: int = 1
    """Links used so far: 1 + the number of config changes that started a new link."""


@dataclass(frozen=True)
class ProxyStats:
    """Snapshot of both directions: ``stats.up`` (client → server), ``stats.down``."""

    up: DirectionStats
    down: DirectionStats

    def __getitem__(self, direction: DirectionName) -> DirectionStats:
        if direction == "up":
            return self.up
        if direction == "down":
            return self.down
        raise KeyError(direction)


class _Path:
    """Mutable state of one direction: its links, counters and delivery timer."""

    def __init__(self, name: DirectionName, config: LinkConfig, seed: int) -> None:
        self.name = name
        self.base_seed = derive_seed(seed, _SEED_LABELS[name])
        self.epoch = 0
        self.current = Link(config, self.base_seed)
        self.retired: list[Link] = []  # older epochs with datagrams still in flight
        self.folded = LinkStats()  # stats of drained, forgotten epochs
        self.forwarded = 0
        self.forwarded_bytes = 0
        self.send_failed = 0
        self.ignored = 0
        self.socket_errors = 0
        self.max_lateness = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # proxy time the timer is set for

    def links(self) -> Iterator[Link]:
        yield from self.retired
        yield self.current

    def reconfigure(self, config: LinkConfig) -> None:
        cur = self.current
        if cur.stats.sent == 0 and cur.in_flight == 0:
            # Untouched: same as having had this config from the start (same seed).
            self.current = Link(config, cur.seed)
            return
        self.epoch += 1
        self.retired.append(cur)
        self.current = Link(config, derive_seed(self.base_seed, f"epoch/{self.epoch}"))
        self.prune()

    def prune(self) -> None:
        """Fold the stats of retired links that have nothing left in flight."""
        keep = []
        for link in self.retired:
            if link.in_flight:
                keep.append(link)
            else:
                _add_stats(self.folded, link.stats)
        self.retired = keep

    def next_arrival(self) -> float | None:
        times = [t for link in self.links() if (t := link.next_arrival()) is not None]
        return min(times) if times else None

    def snapshot(self) -> DirectionStats:
        total = dataclasses.replace(self.folded)
        in_flight = 0
        for link in self.links():
            _add_stats(total, link.stats)
            in_flight += link.in_flight
        return DirectionStats(
            **dataclasses.asdict(total),
            forwarded=self.forwarded,
            forwarded_bytes=self.forwarded_bytes,
            send_failed=self.send_failed,
            ignored=self.ignored,
            socket_errors=self.socket_errors,
            in_flight=in_flight,
            max_lateness_s=self.max_lateness,
            epochs=self.epoch + 1,
        )


def _add_stats(acc: LinkStats, more: LinkStats) -> None:
    for field in dataclasses.fields(LinkStats):
        name = field.name
        if name == "max_backlog_bytes":
            acc.max_backlog_bytes = max(acc.max_backlog_bytes, more.max_backlog_bytes)
        else:
            setattr(acc, name, getattr(acc, name) + getattr(more, name))


class UdpLossyProxy:
    """A UDP relay between one client and one upstream server, impaired by two seeded links.

    ``config`` impairs client → server ("up"); ``reverse`` impairs server → client ("down",
    default: same as ``config``); both default to a perfect link. ``listen_host`` must be a
    numeric address (``"127.0.0.1"``, ``"::1"``); ``upstream`` is ``(host, port)`` of the
    server, resolved when the proxy starts (IPv4 and IPv6 sides may differ).

    Use ``async with UdpLossyProxy(...) as proxy:`` or ``await proxy.start()`` …
    ``proxy.close()``. All methods must be called from the event loop's thread.

    Two optional observers, called synchronously in the event loop: ``tap(direction,
    data)`` sees each datagram before its link decides its fate, ``on_fate(direction,
    data, delivered)`` right after (so a caller can count the loss of the datagrams it
    cares about, not just of all traffic).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        config: LinkConfig | None = None,
        *,
        reverse: LinkConfig | None = None,
        seed: int = 0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        tap: Callable[[DirectionName, bytes], None] | None = None,
        on_fate: Callable[[DirectionName, bytes, bool], None] | None = None,
    ) -> None:
        #: sees every datagram entering the proxy, before the link decides its fate (tests
        #: read what is on the wire with it)
        self.tap = tap
        #: called for every datagram offered to a link, right after the link decided its
        #: fate: ``on_fate(direction, data, delivered)``. ``delivered`` is False if the link
        #: dropped it (random or burst loss, queue tail drop, blackout) and True if the
        #: link scheduled it for delivery (a duplicated datagram is reported once). A
        #: scheduled datagram can still fail to be written (``send_failed``) or be
        #: discarded in flight by :meth:`close`; those are counted in the stats, not here.
        self.on_fate = on_fate
        up_config = config if config is not None else LinkConfig()
        down_config = reverse if reverse is not None else up_config
        try:
            self._listen_info = socket.getaddrinfo(
                listen_host,
                listen_port,
                type=socket.SOCK_DGRAM,
                proto=socket.IPPROTO_UDP,
                flags=socket.AI_NUMERICHOST,
            )[0]
        except socket.gaierror as exc:
            raise ValueError(
                f"listen_host must be a numeric IPv4/IPv6 address, got {listen_host!r} ({exc})"
            ) from None
        self._upstream_spec = (upstream[0], int(upstream[1]))
        self.seed = seed
        self._paths = {
            "up": _Path("up", up_config, seed),
            "down": _Path("down", down_config, seed),
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._last_now = 0.0
        self._listen_sock: socket.socket | None = None
        self._upstream_sock: socket.socket | None = None
        self._upstream_addr: tuple[str, int] | None = None
        self._client_addr: tuple[object, ...] | None = None
        self._closed = False
        self._buf = bytearray(_MAX_DATAGRAM)
        self._view = memoryview(self._buf)

    # ------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Resolve the upstream, bind and connect the sockets, start relaying (``now`` = 0)."""
        if self._loop is not None or self._closed:
            raise RuntimeError("a UdpLossyProxy can be started only once")
        loop = asyncio.get_running_loop()
        host, port = self._upstream_spec
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
        if not infos:  # pragma: no cover - getaddrinfo raises instead
            raise OSError(f"cannot resolve upstream {host!r}")
        up_family, _, _, _, up_addr = infos[0]
        lfamily, _, _, _, laddr = self._listen_info
        listen_sock = upstream_sock = None
        try:
            listen_sock = _udp_socket(lfamily)
            listen_sock.bind(laddr)
            upstream_sock = _udp_socket(up_family)
            upstream_sock.connect(up_addr)  # UDP: immediate, no packet sent
            loop.add_reader(listen_sock.fileno(), self._on_readable, "up")
            loop.add_reader(upstream_sock.fileno(), self._on_readable, "down")
        except BaseException:
            for sock in (listen_sock, upstream_sock):
                if sock is not None:
                    loop.remove_reader(sock.fileno())
                    sock.close()
            raise
        self._loop = loop
        self._listen_sock = listen_sock
        self._upstream_sock = upstream_sock
        self._upstream_addr = (up_addr[0], up_addr[1])
        self._t0 = loop.time()

    def close(self) -> None:
        """Stop relaying: cancel the timers, close both sockets. Idempotent; synchronous.

        Datagrams still in flight are discarded (they stay counted in ``in_flight``).
        """
        if self._closed:
            return
        self._closed = True
        for path in self._paths.values():
            if path.timer is not None:
                path.timer.cancel()
                path.timer = None
        loop = self._loop
        for sock in (self._listen_sock, self._upstream_sock):
            if sock is None:
                continue
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock.fileno())
            sock.close()

    async def __aenter__(self) -> UdpLossyProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- queries

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the client must send to (the port chosen by the kernel)."""
        if self._listen_sock is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._listen_sock.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        """The listening port."""
        return self.address[1]

    @property
    def upstream_address(self) -> tuple[str, int]:
        """The resolved ``(host, port)`` of the server (after :meth:`start`)."""
        if self._upstream_addr is None:
            raise RuntimeError("the proxy is not started")
        return self._upstream_addr

    @property
    def client_address(self) -> tuple[object, ...] | None:
        """The client's last-seen address (None before its first datagram)."""
        return self._client_addr

    @property
    def now(self) -> float:
        """Proxy time: seconds since :meth:`start` (0.0 before); never decreases."""
        if self._loop is None or self._closed:
            return self._last_now
        now = self._loop.time() - self._t0
        if now > self._last_now:
            self._last_now = now
        return self._last_now

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of both directions' counters."""
        return ProxyStats(up=self._paths["up"].snapshot(), down=self._paths["down"].snapshot())

    def config(self, direction: DirectionName) -> LinkConfig:
        """The config of the current link of ``direction``."""
        return self._path(direction).current.config

    # ------------------------------------------------------------------- control

    def set_config(self, direction: DirectionName | Literal["both"], config: LinkConfig) -> None:
        """Impair ``direction`` (``"up"``, ``"down"`` or ``"both"``) with ``config`` from now on.

        Datagrams already in flight keep their scheduled arrival; ``config.blackouts`` are
        in proxy time (:attr:`now`). See the module docstring for the epoch semantics.
        """
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, got {type(config).__name__}")
        for name in self._directions(direction):
            self._paths[name].reconfigure(config)

    def blackout(
        self, seconds: float, direction: DirectionName | Literal["both"] = "both"
    ) -> tuple[float, float]:
        """Drop everything sent in ``direction`` (default both) from now for ``seconds``.

        Adds the window ``[now, now + seconds)`` to the current configs' ``blackouts`` (so
        it starts a new epoch) and returns it, in proxy time. Datagrams already in flight
        still arrive.
        """
        start = self.now
        window = (start, start + seconds)
        for name in self._directions(direction):
            cfg = self._paths[name].current.config
            self._paths[name].reconfigure(
                dataclasses.replace(cfg, blackouts=(*cfg.blackouts, window))
            )
        return window

    # ------------------------------------------------------------------- internals

    def _path(self, direction: str) -> _Path:
        try:
            return self._paths[direction]
        except KeyError:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}") from None

    def _directions(self, direction: str) -> tuple[DirectionName, ...]:
        if direction == "both":
            return _DIRECTIONS
        return (self._path(direction).name,)

    def _on_readable(self, direction: DirectionName) -> None:
        """Read a batch of datagrams from the socket feeding ``direction`` into its link."""
        if self._closed:
            return
        path = self._paths[direction]
        if direction == "up":
            sock, error_path = self._listen_sock, self._paths["down"]
        else:
            sock, error_path = self._upstream_sock, self._paths["up"]
        assert sock is not None
        now = self.now
        link = path.current
        buf, view = self._buf, self._view
        for _ in range(_READ_BATCH):
            try:
                nbytes, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ECONNREFUSED on the connected upstream socket: an ICMP error for a
                # datagram this socket sent earlier.
                error_path.socket_errors += 1
                continue
            if direction == "up":
                self._client_addr = addr
            elif self._client_addr is None:
                path.ignored += 1  # nobody to send it to
                continue
            data = bytes(view[:nbytes])
            if self.tap is not None:
                self.tap(direction, data)
            if self.on_fate is None:
                link.send(data, now)
            else:
                lost_before = link.stats.lost
                link.send(data, now)
                self.on_fate(direction, data, link.stats.lost == lost_before)
        self._schedule(path)

    def _schedule(self, path: _Path) -> None:
        """Make sure ``path``'s timer fires at its earliest pending arrival."""
        assert self._loop is not None
        when = path.next_arrival()
        if when is None:
            return  # an armed timer (set for a packet now gone) just finds nothing due
        if path.timer is not None:
            if path.timer_at <= when:
                return
            path.timer.cancel()
        path.timer_at = when
        path.timer = self._loop.call_at(self._t0 + when, self._on_timer, path)

    def _on_timer(self, path: _Path) -> None:
        """Write out every datagram of ``path`` whose arrival time has come."""
        path.timer = None
        if self._closed:
            return
        raw_now = self.now
        # asyncio may run a timer up to its clock resolution early: deliver what it was for.
        now = max(raw_now, path.timer_at)
        self._last_now = now
        due: list[tuple[float, bytes]] = []
        for link in path.links():
            got = link.deliver(now)
            if got:
                if due:
                    due.extend(got)
                    due.sort(key=lambda item: item[0])  # stable: older epoch first on ties
                else:
                    due = got
        for arrival, data in due:
            lateness = raw_now - arrival
            if lateness > path.max_lateness:
                path.max_lateness = lateness
            if self._write(path, data):
                path.forwarded += 1
                path.forwarded_bytes += len(data)
            else:
                path.send_failed += 1
        path.prune()
        self._schedule(path)

    def _write(self, path: _Path, data: bytes) -> bool:
        try:
            if path.name == "up":
                assert self._upstream_sock is not None
                self._upstream_sock.send(data)
            else:
                if self._client_addr is None:
                    return False
                assert self._listen_sock is not None
                self._listen_sock.sendto(data, self._client_addr)
        except BlockingIOError:  # socket buffer full: dropped, as by a full NIC queue
            return False
        except OSError:  # e.g. ECONNREFUSED: a pending ICMP error, reported on this send
            path.socket_errors += 1
            return False
        return True


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # best effort; the kernel caps it anyway
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
    except BaseException:
        sock.close()
        raise
    return sock
