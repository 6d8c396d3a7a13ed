"""The in-process lossy UDP proxy: relay, seeded loss, delay, blackout, IPv6, shutdown.

All traffic stays on loopback. Bursts are flow-controlled (the test waits until every
datagram of a burst is accounted for before sending the next one), so no kernel buffer
ever overflows and the loss counts are exact, not just statistical.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import random
import socket
import statistics
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import pytest

from wzp.net.udpproxy import UdpLossyProxy
from wzp.sim import Link, LinkConfig, derive_seed

# --------------------------------------------------------------------------- helpers


class _Endpoint(asyncio.DatagramProtocol):
    """Records ``(loop_time, data, addr)`` of every datagram; echoes it back if ``echo``."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.received: list[tuple[float, bytes, tuple[object, ...]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data, addr))
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    def payloads(self) -> list[bytes]:
        return [data for _, data, _ in self.received]


@asynccontextmanager
async def _endpoint(
    *, echo: bool, local: tuple[str, int] | None = None, remote: tuple[str, int] | None = None
) -> AsyncIterator[_Endpoint]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Endpoint(echo), local_addr=local, remote_addr=remote
    )
    try:
        yield protocol
    finally:
        transport.close()
        await asyncio.sleep(0)  # let connection_lost run


@asynccontextmanager
async def _setup(
    config: LinkConfig | None = None,
    *,
    reverse: LinkConfig | None = None,
    seed: int = 0,
    host: str = "127.0.0.1",
    server_host: str | None = None,
) -> AsyncIterator[tuple[UdpLossyProxy, _Endpoint, _Endpoint]]:
    """An echo server, a proxy in front of it and a client connected to the proxy."""
    async with _endpoint(echo=True, local=(server_host or host, 0)) as server:
        assert server.transport is not None
        server_addr = server.transport.get_extra_info("sockname")[:2]
        async with (
            UdpLossyProxy(
                server_addr, config, reverse=reverse, seed=seed, listen_host=host
            ) as proxy,
            _endpoint(echo=False, remote=proxy.address) as client,
        ):
            yield proxy, server, client


async def _until(cond: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.0005)


async def _settled(
    proxy: UdpLossyProxy, server: _Endpoint, client: _Endpoint, sent: int, timeout: float = 3.0
) -> None:
    """Wait until every datagram sent so far is delivered, echoed or lost, end to end."""

    def done() -> bool:
        up, down = proxy.stats.up, proxy.stats.down
        return (
            up.sent == sent
            and up.in_flight == 0
            and len(server.received) == up.forwarded
            and down.sent == len(server.received)
            and down.in_flight == 0
            and len(client.received) == down.forwarded
        )

    await _until(done, timeout, "the burst to settle")


async def _pump(
    proxy: UdpLossyProxy,
    server: _Endpoint,
    client: _Endpoint,
    payloads: list[bytes],
    burst: int = 50,
) -> None:
    """Send ``payloads`` in bursts, settling after each (no kernel buffer can overflow)."""
    base = proxy.stats.up.sent
    for i in range(0, len(payloads), burst):
        for data in payloads[i : i + burst]:
            client.send(data)
        await _settled(proxy, server, client, base + min(i + burst, len(payloads)))


def _seq(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


def _conserved(proxy: UdpLossyProxy) -> None:
    for d in (proxy.stats.up, proxy.stats.down):
        assert d.sent + d.duplicated == d.lost + d.delivered + d.in_flight
        assert d.delivered == d.forwarded + d.send_failed


def _ipv6_loopback_or_skip() -> None:
    if not socket.has_ipv6:
        pytest.skip("Python was built without IPv6 support")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            pytest.skip(f"cannot bind the IPv6 loopback ::1 on this machine ({exc})")
        raise


# --------------------------------------------------------------------------- tests


async def test_clean_link_relays_everything_both_ways_unchanged() -> None:
    rng = random.Random(7)
    payloads = [i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 1400)) for i in range(300)]
    async with _setup() as (proxy, server, client):
        assert proxy.address[0] == "127.0.0.1" and proxy.port > 0
        await _pump(proxy, server, client, payloads, burst=30)
        assert server.payloads() == payloads
        assert client.payloads() == payloads
        # The server sees the proxy's upstream socket, never the client itself.
        assert client.transport is not None
        client_addr = client.transport.get_extra_info("sockname")[:2]
        server_peers = {addr[:2] for _, _, addr in server.received}
        assert len(server_peers) == 1 and client_addr not in server_peers
        assert proxy.client_address is not None and proxy.client_address[:2] == client_addr
        stats = proxy.stats
        nbytes = sum(map(len, payloads))
        for d in (stats.up, stats.down):
            assert (d.sent, d.forwarded, d.lost, d.send_failed) == (300, 300, 0, 0)
            assert d.sent_bytes == d.delivered_bytes == d.forwarded_bytes == nbytes
        _conserved(proxy)


async def test_replies_go_to_the_last_seen_client_address() -> None:
    async with _setup() as (proxy, server, first):
        first.send(b"one")
        await _settled(proxy, server, first, 1)
        async with _endpoint(echo=False, remote=proxy.address) as second:
            second.send(b"two")
            await _until(lambda: len(second.received) == 1, what="the reply to the new client")
            assert second.payloads() == [b"two"]
            assert first.payloads() == [b"one"]


def _simulated_delivery(config: LinkConfig, seed: int, label: str, seqs: list[int]) -> list[int]:
    link = Link(config, derive_seed(seed, label))
    for s in seqs:
        link.send(s.to_bytes(4, "big"), 0.0)
    return [_seq(data) for _, data in link.drain()]


async def _lossy_run(config: LinkConfig, seed: int, n: int) -> tuple[list[int], list[int]]:
    payloads = [i.to_bytes(4, "big") + bytes(12) for i in range(n)]
    async with _setup(config, seed=seed) as (proxy, server, client):
        await _pump(proxy, server, client, payloads, burst=50)
        _conserved(proxy)
        assert proxy.stats.up.lost == proxy.stats.up.lost_random
        return [_seq(p) for p in server.payloads()], [_seq(p) for p in client.payloads()]


async def test_random_loss_is_thirty_percent_each_way_and_repeatable() -> None:
    config, seed, n = LinkConfig(loss=0.3), 1234, 3000
    at_server, at_client = await _lossy_run(config, seed, n)
    up_rate = len(at_server) / n
    down_rate = len(at_client) / len(at_server)
    assert 0.67 <= up_rate <= 0.73, up_rate
    assert 0.67 <= down_rate <= 0.73, down_rate
    # Exactly the datagrams the pure link model loses (same seed labels as link_pair) ...
    assert at_server == _simulated_delivery(config, seed, "a->b", list(range(n)))
    assert at_client == _simulated_delivery(config, seed, "b->a", at_server)
    # ... so a second run over real sockets is identical.
    assert await _lossy_run(config, seed, n) == (at_server, at_client)
    # A different seed loses different datagrams.
    other_server, _ = await _lossy_run(config, seed + 1, 300)
    assert other_server != [s for s in at_server if s < 300]


async def test_one_way_delay_of_100ms_gives_a_200ms_round_trip() -> None:
    loop = asyncio.get_running_loop()
    async with _setup(LinkConfig(delay_s=0.1)) as (proxy, _server, client):
        sent_at = {}
        for i in range(6):
            sent_at[i] = loop.time()
            client.send(i.to_bytes(4, "big"))
            await asyncio.sleep(0.02)
        await _until(lambda: len(client.received) == 6, what="six echoes")
        rtts = [t - sent_at[_seq(data)] for t, data, _ in client.received]
        assert [_seq(d) for d in client.payloads()] == list(range(6))
        assert min(rtts) >= 0.19, rtts
        assert statistics.median(rtts) <= 0.30, rtts
        assert max(rtts) <= 0.5, rtts
        _conserved(proxy)


async def test_blackout_drops_everything_then_traffic_resumes() -> None:
    async with _setup() as (proxy, _server, client):
        sent_at: dict[int, float] = {}
        seq = 0

        async def ping_for(seconds: float) -> None:
            nonlocal seq
            end = proxy.now + seconds
            while proxy.now < end:
                sent_at[seq] = proxy.now
                client.send(seq.to_bytes(4, "big"))
                seq += 1
                await asyncio.sleep(0.01)

        await ping_for(0.2)
        start, end = proxy.blackout(0.5)
        assert end - start == pytest.approx(0.5)
        await ping_for(0.5)
        await ping_for(0.4)
        await _until(lambda: proxy.stats.up.in_flight == 0 and proxy.stats.down.in_flight == 0)
        await asyncio.sleep(0.02)

        echoed = {_seq(d) for d in client.payloads()}
        inside = [s for s, t in sent_at.items() if start + 0.05 <= t < end - 0.05]
        before = [s for s, t in sent_at.items() if t < start - 0.05]
        after = [s for s, t in sent_at.items() if t >= end + 0.05]
        assert len(inside) >= 20 and before and after
        assert echoed.isdisjoint(inside)
        assert set(before) <= echoed
        assert set(after) <= echoed
        stats = proxy.stats
        assert stats.up.lost_blackout >= len(inside)
        assert stats.up.lost_random == stats.down.lost_random == 0
        assert stats.up.epochs == stats.down.epochs == 2
        _conserved(proxy)


async def test_set_config_mid_run_keeps_in_flight_datagrams() -> None:
    async with _setup() as (proxy, server, client):
        proxy.set_config("up", LinkConfig(loss=1.0))
        await _pump(proxy, server, client, [b"lost%d" % i for i in range(10)])
        assert server.received == [] and proxy.stats.up.lost_random == 10

        proxy.set_config("both", LinkConfig(delay_s=0.3))
        for i in range(5):
            client.send(b"slow%d" % i)
        await _until(lambda: proxy.stats.up.in_flight == 5, what="slow datagrams in flight")
        proxy.set_config("up", LinkConfig())
        proxy.set_config("down", LinkConfig())
        for i in range(5):
            client.send(b"fast%d" % i)
        await _until(lambda: len(client.received) == 10, what="all ten echoes")
        fast = [b"fast%d" % i for i in range(5)]
        slow = [b"slow%d" % i for i in range(5)]
        assert client.payloads() == fast + slow
        assert proxy.config("up") == LinkConfig()
        assert proxy.stats.up.epochs == 3
        assert proxy.stats.down.epochs == 1  # untouched links are reconfigured in place
        _conserved(proxy)


async def test_rejects_bad_arguments_and_double_start() -> None:
    with pytest.raises(ValueError, match="numeric"):
        UdpLossyProxy(("127.0.0.1", 9), listen_host="localhost")
    proxy = UdpLossyProxy(("127.0.0.1", 9))
    with pytest.raises(RuntimeError):
        _ = proxy.address
    with pytest.raises(ValueError, match="direction"):
        proxy.set_config("sideways", LinkConfig())  # type: ignore[arg-type]
    await proxy.start()
    try:
        with pytest.raises(RuntimeError):
            await proxy.start()
    finally:
        proxy.close()
        proxy.close()  # idempotent


@pytest.mark.parametrize("server_host", ["::1", "127.0.0.1"])
async def test_ipv6_loopback(server_host: str) -> None:
    _ipv6_loopback_or_skip()
    payloads = [i.to_bytes(4, "big") + b"v6" for i in range(100)]
    async with _setup(LinkConfig(delay_s=0.005), host="::1", server_host=server_host) as (
        proxy,
        server,
        client,
    ):
        assert proxy.address[0] == "::1"
        assert proxy.upstream_address[0] == server_host
        await _pump(proxy, server, client, payloads, burst=25)
        assert client.payloads() == payloads


def test_clean_shutdown_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Close with datagrams in flight inside a fresh debug loop: no timers, readers, tasks
    or sockets survive, and nothing warns."""
    leftovers: dict[str, object] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with _setup(LinkConfig(delay_s=1.0)) as (proxy, _server, client):
            for i in range(10):
                client.send(b"%d" % i)
            await _until(lambda: proxy.stats.up.in_flight == 10, what="ten in flight")
            fds = [s.fileno() for s in (proxy._listen_sock, proxy._upstream_sock) if s]
        assert proxy.stats.up.in_flight == 10  # discarded, still counted
        assert all(p.timer is None for p in proxy._paths.values())
        assert all(not loop.remove_reader(fd) for fd in fds)
        scheduled = getattr(loop, "_scheduled", [])
        leftovers["timers"] = [h for h in scheduled if not h.cancelled()]
        leftovers["tasks"] = asyncio.all_tasks() - {asyncio.current_task()}
        leftovers["sockets"] = [s for s in (proxy._listen_sock, proxy._upstream_sock) if s]

    caplog.set_level(logging.WARNING, logger="asyncio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main(), debug=True)
        gc.collect()
    assert leftovers["timers"] == []
    assert leftovers["tasks"] == set()
    assert all(s.fileno() == -1 for s in leftovers["sockets"])  # type: ignore[attr-defined]
    assert [str(w.message) for w in caught] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_dead_upstream_is_counted_not_raised() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()  # nothing listens there once closed
    async with (
        UdpLossyProxy(dead) as proxy,
        _endpoint(echo=False, remote=proxy.address) as client,
    ):
        for _ in range(5):
            client.send(b"anyone?")
            await asyncio.sleep(0.005)
        await _until(lambda: proxy.stats.up.socket_errors > 0, what="an ICMP error")
        assert client.received == []
        _conserved(proxy)


async def test_on_fate_reports_each_datagrams_link_decision() -> None:
    """``on_fate`` sees every offered datagram once, after ``tap``, with the link's decision:
    exactly the datagrams that the seeded link model drops are reported undelivered."""
    config, seed, n = LinkConfig(loss=0.4), 99, 600
    payloads = [i.to_bytes(4, "big") + bytes(20) for i in range(n)]
    events: list[tuple[str, str, int, bool | None]] = []

    def tap(direction: str, data: bytes) -> None:
        events.append(("tap", direction, _seq(data), None))

    def on_fate(direction: str, data: bytes, delivered: bool) -> None:
        events.append(("fate", direction, _seq(data), delivered))

    async with _endpoint(echo=True, local=("127.0.0.1", 0)) as server:
        assert server.transport is not None
        server_addr = server.transport.get_extra_info("sockname")[:2]
        async with (
            UdpLossyProxy(server_addr, config, seed=seed, tap=tap, on_fate=on_fate) as proxy,
            _endpoint(echo=False, remote=proxy.address) as client,
        ):
            await _pump(proxy, server, client, payloads, burst=50)
            stats = proxy.stats
            _conserved(proxy)

    fates = {
        d: [(s, ok) for kind, dd, s, ok in events if kind == "fate" and dd == d]
        for d in ("up", "down")
    }
    # each fate comes right after the tap of the same datagram
    for i in range(0, len(events), 2):
        (k1, d1, s1, _), (k2, d2, s2, _) = events[i], events[i + 1]
        assert (k1, k2, d1, s1) == ("tap", "fate", d2, s2)
    at_server = [_seq(p) for p in server.payloads()]
    at_client = [_seq(p) for p in client.payloads()]
    assert [s for s, _ in fates["up"]] == list(range(n))
    assert [s for s, ok in fates["up"] if ok] == at_server
    assert [s for s, _ in fates["down"]] == at_server
    assert [s for s, ok in fates["down"] if ok] == at_client
    # the same decisions as the pure link model, and as the proxy's own counters
    assert at_server == _simulated_delivery(config, seed, "a->b", list(range(n)))
    assert sum(not ok for _, ok in fates["up"]) == stats.up.lost == n - len(at_server)
    assert sum(not ok for _, ok in fates["down"]) == stats.down.lost
    assert 0 < stats.up.lost < n


async def test_on_fate_reports_blackout_drops_as_undelivered() -> None:
    fates: list[bool] = []

    def on_fate(direction: str, data: bytes, delivered: bool) -> None:
        if direction == "up":
            fates.append(delivered)

    async with _setup() as (proxy, server, client):
        proxy.on_fate = on_fate
        await _pump(proxy, server, client, [b"a%d" % i for i in range(5)])
        proxy.blackout(10.0, "up")
        for i in range(5):
            client.send(b"b%d" % i)
        await _until(lambda: len(fates) == 10, what="ten fates")
        assert fates == [True] * 5 + [False] * 5
        assert proxy.stats.up.lost_blackout == 5
