"""A relay under a flood of handshake starts: bounded state, counted, still open to members."""

from __future__ import annotations

import socket

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from wzp.net.quic import ALPN, MAX_HALF_OPEN
from wzp.relay.metrics import RelayCollector
from wzp.relay.room import RoomPolicy

from .test_server import HOST, running_relay, until


def _initials(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        quic = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        )
        quic.connect((HOST, 9), now=0.0)
        out.append(quic.datagrams_to_send(now=0.0)[0][0])
    return out


async def test_a_flood_of_handshake_starts_is_bounded_counted_and_members_still_join() -> None:
    assert MAX_HALF_OPEN == 64  # what the relay uses
    async with running_relay({"porch": RoomPolicy()}) as relay:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for datagram in _initials(100):
                flood.sendto(datagram, (HOST, relay.server.port))
            flood.sendto(b"\x00" * 30, (HOST, relay.server.port))
            await until(lambda: relay.server.handshakes()["retries"] >= 36, timeout=20.0)
        hs = relay.server.status()["handshakes"]
        assert hs["in_progress"] == 64
        assert hs["retries"] == 36
        assert hs["not_quic"] == 1
        member = await relay.join("porch")
        assert member.slot >= 0
        metrics = {
            m.name: m.samples[0].value
            for m in RelayCollector(
                relay.server.relay, handshakes=relay.server.handshakes
            ).collect()
            if m.samples
        }
        assert metrics["wzp_relay_handshakes_in_progress"] == 64
        # the member was asked to retry too (once per attempt: a slow machine may start a
        # second one after 3 s)
        assert metrics["wzp_relay_retries"] >= 37
        assert metrics["wzp_relay_not_quic"] == 1
