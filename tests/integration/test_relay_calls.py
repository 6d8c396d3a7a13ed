"""Two handset daemons that cannot reach each other directly call through a relay room.

Real QUIC on loopback: the relay server, and each handset joined to the room by its
:class:`~wzp.daemon.relaylink.RelayLink`. The contacts have no address: the call goes
through the room. What the relay forwards is captured: it carries the report bytes
unchanged and no payload the relay could read. The relay is restarted mid-call: both
handsets rejoin by themselves and the audio comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio.test_alsa import FakeCard
from tests.daemon.test_handset import Box, _box, until
from wzp.audio.alsa import AudioDevice
from wzp.crypto.identity import Identity
from wzp.daemon.config import Contact
from wzp.daemon.demo import DemoAudio
from wzp.daemon.statusfmt import format_status
from wzp.proto.header import parse_datagram
from wzp.relay.config import RelayConfig
from wzp.relay.room import RoomPolicy
from wzp.relay.server import RelayServer

ROOM = "porch"


def _rms(chunks: list[np.ndarray]) -> float:
    x = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(1)
    return float(np.sqrt(np.mean(x**2)))


async def _relay(ident: Identity, port: int, members: list[Identity]) -> RelayServer:
    rooms = {ROOM: RoomPolicy(allow=frozenset(m.fingerprint for m in members))}
    server = RelayServer(
        RelayConfig(listen=("127.0.0.1",), port=port, rooms=rooms), ident, control=False
    )
    await server.start()
    return server


async def test_call_through_the_relay_room_survives_a_relay_restart(tmp_path: Path) -> None:
    ids = {"A": Identity.generate(), "B": Identity.generate()}
    relay_id = Identity.generate()
    server = await _relay(relay_id, 0, [ids["A"], ids["B"]])
    port = server.port
    wire: list[bytes] = []
    forward = server._on_datagram

    def tap(cid, data: bytes) -> None:  # type: ignore[no-untyped-def]
        wire.append(data)
        forward(cid, data)

    server._on_datagram = tap  # what the relay process sees of the media
    relay_kw = {
        "relay_address": ("127.0.0.1", port),
        "relay_fingerprint": relay_id.fingerprint,
        "relay_room": ROOM,
    }
    card = FakeCard()
    card.amplitude = 8000.0  # A speaks a 1 kHz tone
    heard = DemoAudio(np.zeros(0, np.int16))
    # no addresses: the two can only meet in the room
    b = await _box(
        tmp_path, "b", ids["B"], heard, {"alice": Contact("alice", ids["A"].fingerprint, "", 0)},
        auto_answer_s=0.0, **relay_kw,
    )  # fmt: skip
    a = await _box(
        tmp_path, "a", ids["A"], AudioDevice("hw:CARD=X", "hw:CARD=X", pcm_open=card.open),
        {"bob": Contact("bob", ids["B"].fingerprint, "", 0)}, "bob",
        mode="full-duplex", **relay_kw,
    )  # fmt: skip
    assert b.h.relay is not None
    got: list[bytes] = []  # what B's handset received from the relay
    b_rx = b.h.relay._on_datagram

    def b_tap(data: bytes) -> None:
        got.append(data)
        b_rx(data)

    b.h.relay._on_datagram = b_tap  # type: ignore[method-assign]
    try:
        await until(
            lambda: bool(a.h.relay and b.h.relay and a.h.relay.joined and b.h.relay.joined),
            10,
            "joins",
        )
        await until(lambda: ids["B"].fingerprint in a.h.relay.members, 5, "B in A's room")  # type: ignore[union-attr]
        st = a.h.status()["relay"]
        assert st["state"] == "joined" and st["room"] == ROOM and len(st["members"]) == 2
        a.h.place_call()
        await until(
            lambda: a.h.state_name() == "active" and b.h.state_name() == "active", 15, "call"
        )
        await asyncio.sleep(1.5)
        mark = len(heard.heard)
        await asyncio.sleep(1.0)
        assert _rms(heard.heard[mark:]) > 1000  # B hears A through the relay

        # the relay forwarded encrypted media: headers and reports in the clear (SPEC 1),
        # payloads that parse only as AEAD ciphertext; it holds no key to open them
        media = [d for d in wire if len(d) > 40]
        assert len(media) > 50
        parsed = [parse_datagram(d, encrypted=True) for d in media]
        assert all(hasattr(p, "header") for p in parsed)
        slots = {p.header.stream for p in parsed}  # type: ignore[union-attr]
        assert slots <= {a.h.relay.slot, b.h.relay.slot}  # type: ignore[union-attr]
        # forwarded unchanged: every datagram B got is one the relay took in, byte for
        # byte, reports included (they ride in the clear, authenticated end to end)
        seen = set(wire)
        assert got and all(d in seen for d in got)
        reported = {d for d, p in zip(media, parsed, strict=True) if p.report is not None}  # type: ignore[union-attr]
        assert reported & set(got)

        # restart the relay mid-call: both rejoin by themselves, audio resumes within 10 s
        await server.close()
        await asyncio.sleep(1.0)
        server = await _relay(relay_id, port, [ids["A"], ids["B"]])
        t0 = time.monotonic()
        await until(lambda: a.h.relay.joined and b.h.relay.joined, 10, "rejoin")  # type: ignore[union-attr]
        # joined again: the relay line says so, not the dropped connection's error
        # (which stays in --json as last_error)
        for box in (a, b):
            st = box.h.status()["relay"]
            line = next(ln for ln in format_status(box.h.status()).splitlines() if "relay" in ln)
            assert st["last_error"] and line.startswith(" ✓ relay"), st
            assert st["last_error"].split(": ")[-1] not in line, line
            assert st.get("error") is None
        mark = len(heard.heard)
        await until(
            lambda: len(heard.heard) - mark >= 25 and _rms(heard.heard[-25:]) > 1000, 10, "audio"
        )
        resumed = time.monotonic() - t0
        assert resumed < 10
        assert a.h.state_name() == "active" and b.h.state_name() == "active"
        assert a.h.relay.joins == 2 and b.h.relay.joins == 2  # type: ignore[union-attr]
        a.h.hangup()
        await until(lambda: a.h.call is None and b.h.call is None, 10, "hang-up")
        assert b.h.last_call is not None and b.h.last_call["ended"] == "Normal"
    finally:
        await a.h.stop()
        await b.h.stop()
        await server.close()


async def test_room_contact_not_present_is_a_clear_error(tmp_path: Path) -> None:
    ident = Identity.generate()
    relay_id = Identity.generate()
    server = await _relay(relay_id, 0, [ident])
    try:
        box: Box = await _box(
            tmp_path, "a", ident, DemoAudio(np.zeros(0, np.int16)),
            {"bob": Contact("bob", Identity.generate().fingerprint, "", 0)}, "bob",
            relay_address=("127.0.0.1", server.port), relay_fingerprint=relay_id.fingerprint,
            relay_room=ROOM,
        )  # fmt: skip
        await until(lambda: bool(box.h.relay and box.h.relay.joined), 10, "join")
        await box.press("call")
        await until(lambda: "not in room porch" in (box.h.last_error or ""), 3, "the error")
        assert box.h.call is None
    finally:
        await box.h.stop()
        await server.close()


async def test_a_dead_path_to_the_relay_is_noticed_and_rejoined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network change looks like a path that goes silent: the handset notices it from
    its Pings (not after QUIC's 30 s idle timeout) and joins again when it comes back."""
    from wzp.daemon import relaylink
    from wzp.net.udpproxy import UdpLossyProxy

    monkeypatch.setattr(relaylink, "PING_S", 0.3)
    monkeypatch.setattr(relaylink, "DEAD_S", 1.5)
    ident, relay_id = Identity.generate(), Identity.generate()
    server = await _relay(relay_id, 0, [ident])
    proxy = UdpLossyProxy(("127.0.0.1", server.port))
    await proxy.start()
    box = await _box(
        tmp_path, "a", ident, DemoAudio(np.zeros(0, np.int16)), {}, None,
        relay_address=("127.0.0.1", proxy.port), relay_fingerprint=relay_id.fingerprint,
        relay_room=ROOM,
    )  # fmt: skip
    try:
        link = box.h.relay
        assert link is not None
        await until(lambda: link.joined, 10, "join")
        t0 = time.monotonic()
        proxy.blackout(4.0)  # the path goes away for 4 s
        await until(lambda: not link.joined, 4, "the dead path to be noticed")
        assert time.monotonic() - t0 < 3.0
        assert "no answer from the relay" in (link.last_error or "")
        await until(lambda: link.joined and link.joins == 2, 20, "the rejoin")
        assert box.h.status()["relay"]["state"] == "joined"
    finally:
        await box.h.stop()
        proxy.close()
        await server.close()


@contextlib.asynccontextmanager
async def _ptt_room_call(
    tmp_path: Path,
    a_amplitude: float,
    a_mode: str = "full-duplex",
    one_way_s: float = 0.0,
    max_floor_s: float = 60.0,
) -> AsyncIterator[tuple[Box, Box, dict[str, FakeCard], RelayServer]]:
    """A push-to-talk room; A (``a_mode``, its microphone at ``a_amplitude``) calls B
    (who answers at once and knows A as "alice") through it: yields once the call is on.
    ``one_way_s``: each handset reaches the relay through its own delaying proxy."""
    from wzp.net.udpproxy import UdpLossyProxy
    from wzp.sim.link import LinkConfig

    ids = {"A": Identity.generate(), "B": Identity.generate()}
    relay_id = Identity.generate()
    rooms = {ROOM: RoomPolicy(allow=None, push_to_talk=True, max_floor_s=max_floor_s)}
    server = RelayServer(
        RelayConfig(listen=("127.0.0.1",), port=0, rooms=rooms), relay_id, control=False
    )
    await server.start()
    proxies: list[UdpLossyProxy] = []
    ports = {n: server.port for n in "AB"}
    if one_way_s:
        for n, seed in (("A", 1), ("B", 2)):
            proxy = UdpLossyProxy(("127.0.0.1", server.port), LinkConfig(delay_s=one_way_s),
                                  seed=seed)  # fmt: skip
            await proxy.start()
            proxies.append(proxy)
            ports[n] = proxy.port

    def relay_kw(n: str) -> dict[str, Any]:
        return {"relay_address": ("127.0.0.1", ports[n]),
                "relay_fingerprint": relay_id.fingerprint, "relay_room": ROOM}  # fmt: skip

    cards = {n: FakeCard() for n in "AB"}
    cards["A"].amplitude = a_amplitude
    cards["B"].amplitude = 8000.0
    b = await _box(
        tmp_path, "b", ids["B"], AudioDevice("hw:CARD=X", "hw:CARD=X", pcm_open=cards["B"].open),
        {"alice": Contact("alice", ids["A"].fingerprint, "", 0)}, auto_answer_s=0.0,
        **relay_kw("B"),
    )  # fmt: skip
    a = await _box(
        tmp_path, "a", ids["A"], AudioDevice("hw:CARD=X", "hw:CARD=X", pcm_open=cards["A"].open),
        {"bob": Contact("bob", ids["B"].fingerprint, "", 0)}, "bob",
        mode=a_mode, **relay_kw("A"),
    )  # fmt: skip
    try:
        await until(
            lambda: bool(a.h.relay and b.h.relay and a.h.relay.joined and b.h.relay.joined), 15
        )
        await until(lambda: ids["B"].fingerprint in a.h.relay.members, 5)  # type: ignore[union-attr]
        a.h.place_call()
        await until(lambda: a.h.state_name() == "active" and b.h.state_name() == "active", 15)
        yield a, b, cards, server
    finally:
        await a.h.stop()
        await b.h.stop()
        for proxy in proxies:
            proxy.close()
        await server.close()


async def test_push_to_talk_room_floor(tmp_path: Path) -> None:
    """In a push-to-talk room the first member to send holds the floor: the other's PTT
    waits (nothing sent, said in status) until the floor is free, then takes it."""
    async with _ptt_room_call(tmp_path, a_amplitude=8000.0) as (a, b, _cards, _relay):
        # A (full duplex, open microphone) talks first and holds the floor
        await until(lambda: b.h.relay.floor == a.h.relay.slot, 5, "A's floor")  # type: ignore[union-attr]
        b.h.set_ptt(True)
        await asyncio.sleep(0.5)
        assert b.h.floor_taken() and not b.h.talk_now()
        assert b.h.status()["relay"]["floor_taken"] is True
        text = format_status(b.h.status())
        # A by B's contact name for it, not by the alias A gives itself ("a")
        assert "floor_taken by alice (slot" in text and "your PTT waits" in text, text
        assert "PTT held, waiting for the floor" in text
        assert "floor: you have it" in format_status(a.h.status())
        assert any(e["kind"] == "floor" for e in b.h.events)
        assert not b.h.call.runner.talking  # type: ignore[union-attr]
        # A mutes: the floor is freed after 500 ms of silence, and B's held PTT takes it
        a.h.set_ptt(True)  # full duplex: toggles mute
        assert a.h.muted
        await until(lambda: b.h.relay.floor == b.h.relay.slot, 5, "B's floor")  # type: ignore[union-attr]
        await until(lambda: b.h.call.runner.talking, 2, "B talking")  # type: ignore[union-attr]
        # the relay tells each member separately; A's notice may land a moment after B's
        await until(a.h.floor_taken, 2, "A sees B's floor")


@pytest.mark.parametrize("case", ["not-allowed", "no-such-room", "fingerprint"])
async def test_a_relay_that_will_never_seat_the_handset_lights_the_error_led(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not on the allow list, no such room, not the pinned relay: the status LED shows
    the error pattern (not "ready"), at once, and the refusal is reported once, as soon
    as the relay closes the connection (not after the 10 s the Join may take)."""
    from wzp.daemon import relaylink

    monkeypatch.setattr(relaylink, "BACKOFF_S", (60.0,))  # one attempt in this test
    ident, relay_id = Identity.generate(), Identity.generate()
    server = await _relay(relay_id, 0, [Identity.generate() if case == "not-allowed" else ident])
    pinned = Identity.generate() if case == "fingerprint" else relay_id
    box = await _box(
        tmp_path, "a", ident, DemoAudio(np.zeros(0, np.int16)), {}, None,
        relay_address=("127.0.0.1", server.port), relay_fingerprint=pinned.fingerprint,
        relay_room="attic" if case == "no-such-room" else ROOM,
    )  # fmt: skip
    try:
        link = box.h.relay
        assert link is not None
        t0 = time.monotonic()
        await until(lambda: link.state == "reconnecting", 5, "the refusal")
        assert time.monotonic() - t0 < relaylink.JOIN_TIMEOUT_S / 2
        await until(lambda: box.statuses()[-1] == "error", 1, "the error pattern")
        assert box.h.status()["status_led"] == "error"
        line = next(ln for ln in format_status(box.h.status()).splitlines() if "relay" in ln)
        assert line.startswith(" ✗ relay"), line
        word = "mismatch" if case == "fingerprint" else case
        assert word in line, line
        # (the QUIC layer also logs a mismatch of its own)
        told = [
            r for r in caplog.records if r.name.startswith("wzp.daemon") and word in r.getMessage()
        ]
        assert len(told) == 1 and told[0].levelno == logging.WARNING, told
    finally:
        await box.h.stop()
        await server.close()


async def test_a_full_duplex_handset_in_a_push_to_talk_room_takes_the_floor_to_speak_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full-duplex handset's microphone is always open: in a push-to-talk room it would
    hold the floor all call. It sends only while it hears speech, so the others can talk
    in its pauses; it warns once that its mode does not suit the room."""
    async with _ptt_room_call(tmp_path, a_amplitude=0.0) as (a, b, cards, _relay):
        await asyncio.sleep(1.5)
        # silent: A's open microphone does not take the floor
        assert a.h.relay.floor is None and not a.h.call.runner.talking  # type: ignore[union-attr]
        cards["A"].amplitude = 8000.0  # A speaks: it takes the floor
        await until(lambda: b.h.relay.floor == a.h.relay.slot, 5, "A's floor")  # type: ignore[union-attr]
        cards["A"].amplitude = 0.0  # and stops: the floor is free again for B's PTT
        b.h.set_ptt(True)
        await until(lambda: b.h.relay.floor == b.h.relay.slot, 5, "B's floor")  # type: ignore[union-attr]
        warned = [r for r in caplog.records if "push-to-talk room" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING, warned
        line = next(ln for ln in format_status(a.h.status()).splitlines() if "relay" in ln)
        assert line.startswith(" ✗ relay") and 'mode = "half-duplex"' in line, line


async def test_a_push_to_talk_collision_does_not_push_the_loser_up_the_ladder(
    tmp_path: Path,
) -> None:
    """Both press PTT at once over a 300 ms round trip to the relay: one takes the floor,
    the relay drops what the other sent until its handset learns (SPEC 8.4). That gap
    in the loser's seqs is not the link's loss: told who holds the floor, the receiving
    handset excuses it. Before, each collision read as a long run of loss and the burst
    rule sent the loser to severe (83 kbit/s, a lower Opus rate) on a perfect link."""
    from wzp.relay.room import DROP_NOT_FLOOR_HOLDER

    async with _ptt_room_call(tmp_path, 8000.0, "half-duplex", one_way_s=0.15) as (
        a, b, _cards, server,
    ):  # fmt: skip
        await asyncio.sleep(2.0)
        for _ in range(2):  # two collisions
            a.h.set_ptt(True)
            b.h.set_ptt(True)
            await asyncio.sleep(1.5)
            a.h.set_ptt(False)
            b.h.set_ptt(False)
            await asyncio.sleep(1.5)
        drops = server.relay.counters.datagram_drops.get(DROP_NOT_FLOOR_HOLDER, 0)
        assert drops >= 2  # the collisions happened: the relay dropped the losers' packets
        for box in (a, b):  # then each talks alone
            box.h.set_ptt(True)
            await asyncio.sleep(2.0)
            box.h.set_ptt(False)
            await asyncio.sleep(1.0)
        for box in (a, b):
            call = box.h.status()["call"]
            assert (call["tier"], call["tier_changes"]) == ("clear", 0), (box.name, call)


@pytest.mark.parametrize("b_answers", [True, False])
async def test_a_talker_past_max_floor_s_gives_way_and_comes_back_on_the_same_tier(
    tmp_path: Path, b_answers: bool
) -> None:
    """A holds PTT past the room's max_floor_s (3 s here): the relay frees the floor and
    drops A's packets for 3 s; B's held PTT takes it meanwhile (or nobody does), and A
    takes it again once it is free. The gap in A's seqs is the relay's doing, not the
    link's: A's tier stays where it was."""
    from wzp.relay.room import DROP_FLOOR_TIMEOUT, FLOOR_LOCKOUT_S

    async with _ptt_room_call(tmp_path, 8000.0, "half-duplex", one_way_s=0.15, max_floor_s=3.0) as (
        a,
        b,
        _cards,
        server,
    ):
        link_a, link_b = a.h.relay, b.h.relay
        assert link_a is not None and link_b is not None
        await asyncio.sleep(1.0)
        a.h.set_ptt(True)
        await until(lambda: link_b.floor == link_a.slot, 5, "A's floor")
        if b_answers:
            b.h.set_ptt(True)  # B waits for the floor, and gets it at A's time-out
            await until(lambda: link_b.floor == link_b.slot, 8, "B's floor")
            await asyncio.sleep(1.0)
            b.h.set_ptt(False)
        else:
            await until(lambda: link_b.floor is None, 8, "A's time-out")
            await asyncio.sleep(FLOOR_LOCKOUT_S / 2)
            assert link_b.floor is None  # A is kept off it
        assert server.relay.counters.floor_timeouts == 1
        await until(lambda: link_b.floor == link_a.slot, 5, "A's floor again")
        await asyncio.sleep(1.5)
        a.h.set_ptt(False)
        await asyncio.sleep(1.0)
        assert server.relay.counters.datagram_drops.get(DROP_FLOOR_TIMEOUT, 0) > 0
        for box in (a, b):
            call = box.h.status()["call"]
            assert (call["tier"], call["tier_changes"]) == ("clear", 0), (box.name, call)
