"""Hostile peers against real handsets over real QUIC on loopback.

A live call between two handset daemons is attacked from inside the connection (a
flood of garbage datagrams, garbage and oversize signalling streams, a CallAnswer
for another call id) and from outside (a stranger calling, a replayed CallOffer, a
bad signature). Each attack is refused with a reason and counted; the call goes on
and the audio keeps flowing.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct

import numpy as np
import pytest

from tests.audio.test_alsa import FakeCard
from tests.daemon.test_handset import Box, pair, until
from wzp.audio.alsa import AudioDevice
from wzp.crypto.handshake import Ephemeral, new_call_id, sign_offer
from wzp.crypto.identity import Identity
from wzp.daemon.demo import DemoAudio
from wzp.net.quic import connect_wzp
from wzp.proto import signal as sig
from wzp.proto.framing import frame
from wzp.proto.profiles import PHASE1_PROFILES

pytestmark = pytest.mark.asyncio


def _rms(chunks: list[np.ndarray]) -> float:
    x = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(1)
    return float(np.sqrt(np.mean(x**2)))


async def _pair(tmp_path, ids) -> tuple[Box, Box, DemoAudio]:  # type: ignore[no-untyped-def]
    card = FakeCard()
    card.amplitude = 8000.0  # A's microphone: a 1 kHz tone
    heard = DemoAudio(np.zeros(0, np.int16))
    a, b = await pair(
        tmp_path, ids, AudioDevice("hw:CARD=X", "hw:CARD=X", pcm_open=card.open), heard,
        a_kw={"mode": "full-duplex"}, b_kw={"auto_answer_s": 0.0},
    )  # fmt: skip
    return a, b, heard


def _offer(me: Identity, callee: Identity, *, bad_signature: bool = False) -> sig.CallOffer:
    eph = Ephemeral.generate()
    signature = sign_offer(me, eph, callee.fingerprint)
    if bad_signature:
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    return sig.CallOffer(
        identity_pub=me.ed25519_pub,
        ephemeral_pub=eph.public,
        signature=signature,
        supported_profiles=PHASE1_PROFILES,
        call_id=new_call_id().hex(),
        alias="mallory",
    )


async def _answer_to(conn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(conn.recv_message(), timeout)


async def test_live_call_survives_attacks_from_inside_and_outside(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = {"A": Identity.generate(), "B": Identity.generate()}
    mallory = Identity.generate()
    a, b, heard = await _pair(tmp_path, ids)
    try:
        a.h.place_call()
        await until(lambda: a.h.state_name() == "active" and b.h.state_name() == "active", 15)
        await asyncio.sleep(1.5)
        before = len(heard.heard)
        await asyncio.sleep(1.0)
        assert _rms(heard.heard[before:]) > 1000  # B hears A's tone

        # from inside the live connection (the peer misbehaves)
        assert a.h.call is not None
        conn = a.h.call.conn
        rng = random.Random(7)
        flood = 0  # garbage datagrams that went out (the sender queues at most a few)
        end = asyncio.get_running_loop().time() + 10
        while flood < 2000 and asyncio.get_running_loop().time() < end:
            for _ in range(8):
                size = rng.randrange(1, 1100)
                flood += conn.send_datagram(bytes(rng.randrange(256) for _ in range(size)))
            await asyncio.sleep(0.002)
        assert flood >= 2000
        quic = conn._quic
        for data in (
            struct.pack(">I", 0xFFFF_FFFF) + b"x" * 64,  # oversize length prefix
            frame(b"{not json"),
            os.urandom(500),
        ):
            quic.send_stream_data(quic.get_next_available_stream_id(), data, end_stream=True)
        conn.transmit()
        stale = sig.CallAnswer(
            identity_pub=ids["A"].ed25519_pub,
            ephemeral_pub=Ephemeral.generate().public,
            signature=bytes(64),
            chosen_profile=PHASE1_PROFILES[0],
            call_id=new_call_id().hex(),
        )
        conn.send_message(stale)

        # from outside: a stranger calls, and replays A's own offer, during the call
        b_engine = b.h.call.runner.engine if b.h.call else None
        assert b_engine is not None and b_engine._offer is not None
        replay = b_engine._offer
        for msg, in_call_reason in ((_offer(mallory, ids["B"]), "Busy"), (replay, "Busy")):
            m = await connect_wzp("127.0.0.1", b.h.port, mallory, ids["B"].fingerprint)
            try:
                m.send_message(msg)
                answer = await _answer_to(m)
                assert isinstance(answer, sig.Hangup) and answer.reason.value == in_call_reason
            finally:
                await m.aclose()

        # the call goes on, audio keeps flowing, and everything was counted
        await asyncio.sleep(2.0)
        assert a.h.state_name() == "active" and b.h.state_name() == "active"
        before = len(heard.heard)
        await asyncio.sleep(1.0)
        assert _rms(heard.heard[before:]) > 1000
        st = b.h.status()
        dropped = sum(st["call"]["drops"].values())
        counters = b.h.call.conn.counters
        assert dropped + counters.datagrams_rx_dropped >= 0.95 * flood, (st["call"]["drops"], flood)
        assert counters.stream_errors >= 3
        await until(lambda: b.h.ignored["stale"] >= 1, 3, "the stale CallAnswer to be counted")
        assert st["refused"].get("busy", 0) >= 2
        assert any(e["kind"] == "refused" and "busy" in e["detail"] for e in st["events"])
    finally:
        await a.h.stop()
        await b.h.stop()


async def test_idle_handset_refuses_hostile_offers_with_reasons(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = {"A": Identity.generate(), "B": Identity.generate()}
    mallory = Identity.generate()
    a, b, _heard = await _pair(tmp_path, ids)
    try:
        # one real call, to have an offer to replay afterwards
        a.h.place_call()
        await until(lambda: b.h.state_name() == "active", 15)
        replay = b.h.call.runner.engine._offer if b.h.call else None
        assert replay is not None
        a.h.hangup()
        await until(lambda: a.h.call is None and b.h.call is None, 10)

        cases = [
            # (who, offer, the Hangup reason expected or None for no answer, counter)
            (mallory, _offer(mallory, ids["B"], bad_signature=True), "Error", "bad-signature"),
            (mallory, _offer(mallory, ids["B"]), "Declined", "not-allowed"),
            # A's old offer replayed by someone else: not the identity the connection proved
            (mallory, replay, "Error", "identity-mismatch"),
            # ... and replayed on a connection in A's own name: a call id already used
            (ids["A"], replay, None, "replayed-offer"),
        ]
        for who, offer, reason, counter in cases:
            m = await connect_wzp("127.0.0.1", b.h.port, who, ids["B"].fingerprint)
            try:
                m.send_message(offer)
                if reason is None:
                    with pytest.raises(asyncio.TimeoutError):
                        await _answer_to(m, timeout=2.0)  # a replay gets nothing back
                else:
                    answer = await _answer_to(m)
                    assert isinstance(answer, sig.Hangup) and answer.reason.value == reason
            finally:
                await m.aclose()
            await until(lambda c=counter: b.h.refused.get(c, 0) >= 1, 20, f"{counter} counted")
        assert b.h.state_name() == "idle" and b.h.call is None
        details = " | ".join(e["detail"] for e in b.h.events if e["kind"] == "refused")
        for words in ("bad signature", "not a contact", "does not match", "replayed"):
            assert words in details, details
        # and a genuine call still works afterwards
        a.h.place_call()
        await until(lambda: a.h.state_name() == "active" and b.h.state_name() == "active", 15)
    finally:
        await a.h.stop()
        await b.h.stop()
