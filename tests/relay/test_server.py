"""wzp.relay.server over real QUIC on loopback: members join with connect_wzp(server_name=room)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wzp.crypto.handshake import sign_join
from wzp.crypto.identity import Identity
from wzp.daemon.control import request
from wzp.net.quic import WzpConnection, connect_wzp
from wzp.proto.header import MediaHeader, build_datagram
from wzp.proto.signal import (
    CallOffer,
    Error,
    Floor,
    IceCandidate,
    Join,
    Message,
    Ping,
    Pong,
    RoomUpdate,
    UnknownMessage,
)
from wzp.relay.config import RelayConfig
from wzp.relay.room import FLOOR_RELEASE_S, JOIN_TIMEOUT_S, RoomPolicy
from wzp.relay.server import RelayServer, run_relay

TIMEOUT = 5.0
HOST = "127.0.0.1"


@dataclass
class Member:
    ident: Identity
    conn: WzpConnection
    slot: int = 0
    got: list[bytes] = field(default_factory=list)

    @property
    def fp(self) -> str:
        return self.ident.fingerprint.hex()

    def packet(self, seq: int, stream: int | None = None, body: int = 60) -> bytes:
        header = MediaHeader(
            codec=1, seq=seq, ts=seq * 20, stream=self.slot if stream is None else stream
        )
        return build_datagram(header, os.urandom(body), None)

    async def msg(self) -> Message | UnknownMessage:
        return await asyncio.wait_for(self.conn.recv_message(), TIMEOUT)


class Relay:
    """A running RelayServer plus helpers to connect members to it."""

    def __init__(self, server: RelayServer, ident: Identity) -> None:
        self.server = server
        self.ident = ident
        self.members: list[Member] = []

    async def connect(self, room: str, ident: Identity | None = None) -> Member:
        ident = ident or Identity.generate()
        conn = await connect_wzp(
            HOST, self.server.port, ident, self.ident.fingerprint, server_name=room
        )
        member = Member(ident, conn)
        self.members.append(member)
        return member

    async def join(
        self,
        room: str,
        ident: Identity | None = None,
        alias: str | None = None,
        collect: bool = True,
    ) -> Member:
        member = await self.connect(room, ident)
        member.conn.send_message(join_for(member.ident, self.ident, room, alias))
        update = await member.msg()
        assert isinstance(update, RoomUpdate), update
        member.slot = update.you
        if collect:
            member.conn.on_datagram = member.got.append
        return member


def join_for(ident: Identity, relay: Identity, room: str, alias: str | None = None) -> Join:
    return Join(
        identity_pub=ident.ed25519_pub,
        room=room,
        signature=sign_join(ident, relay.fingerprint, room),
        alias=alias,
    )


@contextlib.asynccontextmanager
async def running_relay(
    rooms: Mapping[str, RoomPolicy],
    *,
    clock: Callable[[], float] = time.monotonic,
    **config_values: Any,
) -> AsyncIterator[Relay]:
    ident = Identity.generate()
    config = RelayConfig(listen=(HOST,), port=0, rooms=rooms, **config_values)
    server = RelayServer(config, ident, clock=clock, control=False)
    await server.start()
    relay = Relay(server, ident)
    try:
        yield relay
    finally:
        for m in relay.members:
            await m.conn.aclose(timeout=1.0)
        await server.close()


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# ----------------------------------------------------------------------------- joining


async def test_join_room_update_and_datagrams_arrive_byte_identical() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        a = await relay.join("porch", alias="alice")
        b_ident = Identity.generate()
        b = await relay.join("porch", b_ident)
        assert (a.slot, b.slot) == (1, 2)
        # a hears about b: a RoomUpdate to everyone on every join
        update = await a.msg()
        assert isinstance(update, RoomUpdate) and update.room == "porch" and update.you == 1
        assert [(p.fingerprint, p.alias, p.slot) for p in update.participants] == [
            (a.fp, "alice", 1),
            (b.fp, None, 2),
        ]
        sent_ab = [a.packet(i) for i in range(20)]
        sent_ba = [b.packet(i) for i in range(20)]
        for x, y in zip(sent_ab, sent_ba, strict=True):
            assert a.conn.send_datagram(x) and b.conn.send_datagram(y)
            await asyncio.sleep(0.002)
        await until(lambda: len(b.got) == 20 and len(a.got) == 20)
        assert b.got == sent_ab and a.got == sent_ba  # unchanged, in order on loopback
        status = relay.server.status()
        assert status["fingerprint"] == relay.ident.fingerprint_text
        members = status["rooms"]["porch"]["members"]
        assert [(m["slot"], m["alias"], m["fingerprint"]) for m in members] == [
            (1, "alice", a.ident.fingerprint_text),
            (2, None, b.ident.fingerprint_text),
        ]
        assert status["counters"]["datagrams_forwarded"] == 40
        assert status["counters"]["forwarded_bytes"] == sum(map(len, sent_ab + sent_ba))
        # a leaves: b gets a RoomUpdate with itself only
        await a.conn.aclose()
        update = await b.msg()
        assert isinstance(update, RoomUpdate) and [p.slot for p in update.participants] == [2]
        assert relay.server.relay.counters.leaves == 1


async def test_bad_datagrams_are_dropped_and_counted() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        a = await relay.join("porch")
        b = await relay.join("porch")
        outsider = await relay.connect("porch")  # connected, never joined
        assert outsider.conn.send_datagram(a.packet(0, stream=1))
        assert a.conn.send_datagram(a.packet(1, stream=b.slot))  # b's stream byte
        assert a.conn.send_datagram(a.packet(2, stream=0))
        assert a.conn.send_datagram(b"\x00" * 11)  # shorter than a header
        assert a.conn.send_datagram(bytes([0x3C]) + bytes(40))  # codec 15
        good = a.packet(3)
        assert a.conn.send_datagram(good)
        await until(lambda: len(b.got) == 1)
        assert b.got == [good]
        drops = relay.server.relay.counters.datagram_drops
        assert drops == {"not-a-member": 1, "wrong-stream": 2, "malformed": 2}
        assert relay.server.status()["rooms"]["porch"]["members"][0]["dropped"] == 4


@pytest.mark.parametrize("case", ["bad-signature", "not-allowed", "room-full", "no-such-room"])
async def test_refused_joins_get_an_error_and_are_closed(case: str) -> None:
    allowed = Identity.generate()
    rooms = {
        "vip": RoomPolicy(allow=frozenset({allowed.fingerprint})),
        "duo": RoomPolicy(max_members=2),
    }
    async with running_relay(rooms) as relay:
        room = {"not-allowed": "vip", "no-such-room": "attic"}.get(case, "duo")
        if case == "room-full":
            await relay.join("duo")
            await relay.join("duo")
        if case == "not-allowed":
            await relay.join("vip", allowed)  # the allowed one gets in
        m = await relay.connect(room)
        join = join_for(m.ident, relay.ident, room)
        if case == "bad-signature":
            join = Join(join.identity_pub, room, bytes(64), None)
        m.conn.send_message(join)
        error = await m.msg()
        assert isinstance(error, Error) and error.code == case
        await asyncio.wait_for(m.conn.wait_closed(), TIMEOUT)
        assert m.conn.close_reason == case
        assert relay.server.relay.counters.joins_refused == {case: 1}


async def test_a_join_signed_by_another_key_than_the_tls_certificate_is_refused() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        m = await relay.connect("porch")
        m.conn.send_message(join_for(Identity.generate(), relay.ident, "porch"))
        error = await m.msg()
        assert isinstance(error, Error) and error.code == "identity-mismatch"
        await asyncio.wait_for(m.conn.wait_closed(), TIMEOUT)


async def test_bad_room_name_in_sni_is_refused() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        m = await relay.connect("Porch")
        error = await m.msg()
        assert isinstance(error, Error) and error.code == "bad-room"
        await asyncio.wait_for(m.conn.wait_closed(), TIMEOUT)


async def test_anything_before_join_closes_even_a_ping() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        m = await relay.connect("porch")
        m.conn.send_message(Ping(timestamp_ms=7))
        error = await m.msg()
        assert isinstance(error, Error) and error.code == "join-first"
        await asyncio.wait_for(m.conn.wait_closed(), TIMEOUT)
        # after the Join, a Ping is answered
        b = await relay.join("porch")
        b.conn.send_message(Ping(timestamp_ms=9))
        assert await b.msg() == Pong(timestamp_ms=9)


async def test_a_silent_connection_is_closed_after_the_join_timeout() -> None:
    now = [1000.0]
    async with running_relay({"porch": RoomPolicy()}, clock=lambda: now[0]) as relay:
        m = await relay.connect("porch")
        await until(lambda: relay.server.relay.counters.connections == 1)
        await asyncio.sleep(0.2)
        assert m.conn.is_connected
        now[0] += JOIN_TIMEOUT_S
        error = await m.msg()
        assert isinstance(error, Error) and error.code == "join-timeout"
        await asyncio.wait_for(m.conn.wait_closed(), TIMEOUT)
        assert relay.server.relay.counters.closed_before_join == {"join-timeout": 1}


async def test_connections_beyond_max_pending_get_busy_and_are_closed() -> None:
    async with running_relay({"porch": RoomPolicy()}, max_pending=2) as relay:
        waiting = [await relay.connect("porch") for _ in range(2)]
        await until(lambda: relay.server.relay.pending == 2)
        extra = await relay.connect("porch")
        error = await extra.msg()
        assert isinstance(error, Error) and error.code == "busy"
        await asyncio.wait_for(extra.conn.wait_closed(), TIMEOUT)
        assert relay.server.relay.counters.joins_refused == {"busy": 1}
        assert all(m.conn.is_connected for m in waiting)
        # once one of them joins, a newcomer gets in
        waiting[0].conn.send_message(join_for(waiting[0].ident, relay.ident, "porch"))
        assert isinstance(await waiting[0].msg(), RoomUpdate)
        newcomer = await relay.join("porch")
        assert newcomer.slot == 2


async def test_joining_again_closes_the_old_connection() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        ident = Identity.generate()
        old = await relay.join("porch", ident)
        new = await relay.join("porch", ident)
        await asyncio.wait_for(old.conn.wait_closed(), TIMEOUT)
        assert old.conn.close_reason == "superseded" and new.conn.is_connected
        assert new.slot == 1


# ----------------------------------------------------------------------------- signalling


async def test_signalling_with_to_reaches_only_that_member_with_the_true_from() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        a = await relay.join("porch")
        b = await relay.join("porch")
        c = await relay.join("porch")
        for m in (a, a, b):  # drain the RoomUpdates of later joins
            assert isinstance(await m.msg(), RoomUpdate)
        offer = CallOffer(
            identity_pub=a.ident.ed25519_pub,
            ephemeral_pub=bytes(32),
            signature=bytes(64),
            supported_profiles=(),
            call_id="ab" * 16,
            to=b.fp,
            from_=c.fp,  # forged
        )
        a.conn.send_message(offer)
        got = await b.msg()
        assert isinstance(got, CallOffer)
        assert got.from_ == a.fp and got.to == b.fp and got.call_id == offer.call_id
        # c got nothing: the next message it sees is one sent to it afterwards
        b.conn.send_message(IceCandidate(candidate="hello c", to=c.fp))
        got_c = await c.msg()
        assert got_c == IceCandidate(candidate="hello c", to=c.fp, from_=b.fp)
        counters = relay.server.relay.counters
        assert counters.forged_from == 1 and counters.messages_forwarded == 2
        # a message to someone not in the room comes back as an Error
        a.conn.send_message(IceCandidate(candidate="x", to="0" * 32))
        error = await a.msg()
        assert isinstance(error, Error) and error.code == "not-in-room"


# ----------------------------------------------------------------------------- floor


async def test_push_to_talk_floor_is_taken_announced_and_released_after_silence() -> None:
    async with running_relay({"ptt": RoomPolicy(push_to_talk=True)}) as relay:
        a = await relay.join("ptt")
        assert await a.msg() == Floor(slot=None)
        b = await relay.join("ptt")
        assert await b.msg() == Floor(slot=None)
        assert isinstance(await a.msg(), RoomUpdate)
        for seq in range(5):
            assert a.conn.send_datagram(a.packet(seq))
            await asyncio.sleep(0.02)
        last_sent = time.monotonic()
        assert await a.msg() == Floor(slot=1)
        assert await b.msg() == Floor(slot=1)
        # b cannot talk over a
        assert b.conn.send_datagram(b.packet(0))
        await until(lambda: len(b.got) == 5)
        released = await b.msg()
        waited = time.monotonic() - last_sent
        assert released == Floor(slot=None)
        assert await a.msg() == Floor(slot=None)
        assert FLOOR_RELEASE_S - 0.05 <= waited < FLOOR_RELEASE_S + 0.5
        assert a.got == []
        assert relay.server.relay.counters.datagram_drops == {"not-floor-holder": 1}
        # now b may take it
        pkt = b.packet(1)
        assert b.conn.send_datagram(pkt)
        assert await a.msg() == Floor(slot=2)
        await until(lambda: a.got == [pkt])


# ----------------------------------------------------------------------------- flood


async def test_a_flooding_member_does_not_stop_the_others() -> None:
    async with running_relay({"porch": RoomPolicy()}) as relay:
        flooder = await relay.join("porch")
        talker = await relay.join("porch")
        listener = await relay.join("porch")
        await asyncio.sleep(0.1)
        garbage = [os.urandom(100) for _ in range(64)]
        flood_rate, duration = 10_000, 1.0

        async def flood() -> int:
            # 20 every 2 ms on an absolute schedule
            start, n, ticks = time.monotonic(), 0, int(duration * 500)
            for i in range(ticks):
                for _ in range(flood_rate // 500):
                    flooder.conn.send_datagram(garbage[n % 64])
                    n += 1
                await asyncio.sleep(max(0.0, start + (i + 1) / 500 - time.monotonic()))
            return n

        async def talk() -> list[bytes]:
            sent = []
            for seq in range(int(duration * 50)):
                pkt = talker.packet(seq)
                talker.conn.send_datagram(pkt)
                sent.append(pkt)
                await asyncio.sleep(0.02)
            return sent

        started = time.monotonic()
        flooded, sent = await asyncio.gather(flood(), talk())
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)
        counters = relay.server.relay.counters
        assert flooded == 10_000 and elapsed < 3.0
        # the flood really went out (the flooder's own sender drops what its queue cannot
        # take, more so on a loaded machine), and the relay counted (nearly) all of it; the
        # rest was lost in the kernel's socket buffers, outside the relay
        went = flooder.conn.counters.datagrams_sent
        dropped = sum(counters.datagram_drops.values())
        assert went >= 5_000, flooder.conn.counters
        assert dropped >= 0.9 * went, (counters, flooder.conn.counters)
        delivered = set(listener.got) & set(sent)
        assert len(delivered) >= 0.95 * len(sent), (len(delivered), len(sent), counters)
        assert set(flooder.got) <= set(sent)


# ----------------------------------------------------------------------------- service


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def test_run_relay_with_control_socket_status(capsys: pytest.CaptureFixture[str]) -> None:
    short = Path(tempfile.mkdtemp(prefix="wzpr-", dir="/tmp"))
    try:
        port = _free_udp_port()
        cfg = short / "relay.toml"
        cfg.write_text(
            f'listen = ["{HOST}"]\nport = {port}\nidentity = "{short}/id.seed"\n'
            f'control_socket = "{short}/c.sock"\n[rooms.porch]\nallow = "open"\n'
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_relay(cfg, stop=stop))
        sock = short / "c.sock"
        await until(lambda: sock.exists() or task.done())
        status = await asyncio.to_thread(request, sock, "status")
        ident = status["fingerprint"]
        assert (short / "id.seed").stat().st_mode & 0o777 == 0o600
        assert status["listen"] == [f"{HOST}:{port}"]
        # a member joins against the printed fingerprint
        relay_ident_fp = bytes.fromhex(ident.replace(":", ""))
        me = Identity.generate()
        conn = await connect_wzp(HOST, port, me, relay_ident_fp, server_name="porch")
        conn.send_message(
            Join(
                identity_pub=me.ed25519_pub,
                room="porch",
                signature=me.sign(b"wzp-join" + relay_ident_fp + b"porch"),
                alias="me",
            )
        )
        assert isinstance(await asyncio.wait_for(conn.recv_message(), TIMEOUT), RoomUpdate)
        status = await asyncio.to_thread(request, sock, "status")
        assert status["rooms"]["porch"]["members"] == [
            {
                "slot": 1,
                "fingerprint": me.fingerprint_text,
                "alias": "me",
                "packets": 0,
                "bytes": 0,
                "dropped": 0,
                "report": None,
            }
        ]
        assert status["counters"]["joins"] == 1
        await conn.aclose()
        stop.set()
        assert await asyncio.wait_for(task, TIMEOUT) == 0
        assert not sock.exists()
        assert f"wzp relay fingerprint: {ident}" in capsys.readouterr().out
    finally:
        for p in sorted(short.iterdir()):
            p.unlink()
        short.rmdir()


async def test_run_relay_refuses_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text("[rooms.porch]\nmax_members = 3\n")
    assert await run_relay(cfg) == 78
    err = capsys.readouterr().err
    assert "line 1: rooms.porch.allow: missing" in err
