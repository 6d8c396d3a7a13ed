"""The relay's Prometheus /metrics, scraped over HTTP from a relay forwarding real QUIC."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wzp.proto.header import MediaHeader, QualityReport, build_datagram
from wzp.proto.signal import Error, Join
from wzp.relay.config import ConfigErrors, parse_config
from wzp.relay.metrics import MAX_CLIENTS, SEND_BUFFER_FULL
from wzp.relay.room import RoomPolicy

from .test_server import TIMEOUT, Member, join_for, running_relay, until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(port: int) -> Samples:
    status, ctype, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _with_report(member: Member, seq: int, report: QualityReport) -> bytes:
    header = MediaHeader(codec=1, seq=seq, ts=seq * 20, stream=member.slot, has_report=True)
    return build_datagram(header, os.urandom(60), report)


async def test_scrape_counts_forwarding_drops_refusals_and_reported_loss() -> None:
    async with running_relay({"porch": RoomPolicy()}, metrics=("127.0.0.1", 0)) as relay:
        metrics = relay.server.metrics
        assert metrics is not None
        port = metrics.port
        assert relay.server.status()["metrics"] == f"http://127.0.0.1:{port}/metrics"
        before = await scrape(port)
        assert before[("wzp_relay_members", (("room", "porch"),))] == 0
        assert before[("wzp_relay_rooms", ())] == 1
        a = await relay.join("porch", alias="alice")
        b = await relay.join("porch")
        report = QualityReport.from_measured(20.0, 400, 30, 24)
        sent_a = [_with_report(a, i, report) for i in range(10)]
        sent_b = [b.packet(i) for i in range(5)]
        for pkt in sent_a:
            assert a.conn.send_datagram(pkt)
        for pkt in sent_b:
            assert b.conn.send_datagram(pkt)
        assert a.conn.send_datagram(a.packet(99, stream=b.slot))  # wrong stream byte
        assert a.conn.send_datagram(bytes(5))  # malformed
        await until(lambda: len(b.got) == 10 and len(a.got) == 5)
        await until(lambda: sum(relay.server.relay.counters.datagram_drops.values()) == 2)
        # a refused join
        m = await relay.connect("porch")
        join = join_for(m.ident, relay.ident, "porch")
        m.conn.send_message(Join(join.identity_pub, "porch", bytes(64), None))
        assert isinstance(await m.msg(), Error)
        await until(lambda: relay.server.relay.counters.joins_refused != {})

        got = await scrape(port)
        fwd_bytes = sum(map(len, sent_a + sent_b))
        slot_a = (("fingerprint", a.ident.fingerprint_text), ("room", "porch"), ("slot", "1"))
        slot_b = (("fingerprint", b.ident.fingerprint_text), ("room", "porch"), ("slot", "2"))
        expected = {
            ("wzp_relay_members", (("room", "porch"),)): 2,
            ("wzp_relay_rooms", ()): 1,
            ("wzp_relay_pending_connections", ()): 0,
            ("wzp_relay_connections_total", ()): 3,
            ("wzp_relay_joins_total", ()): 2,
            ("wzp_relay_joins_refused_total", (("reason", "bad-signature"),)): 1,
            ("wzp_relay_datagrams_received_total", ()): 17,
            ("wzp_relay_datagrams_forwarded_total", ()): 15,
            ("wzp_relay_forwarded_packets_total", ()): 15,
            ("wzp_relay_forwarded_bytes_total", ()): fwd_bytes,
            ("wzp_relay_dropped_packets_total", (("reason", "wrong-stream"),)): 1,
            ("wzp_relay_dropped_packets_total", (("reason", "malformed"),)): 1,
            ("wzp_relay_dropped_packets_total", (("reason", SEND_BUFFER_FULL),)): 0,
            ("wzp_relay_dropped_bytes_total", (("reason", "malformed"),)): 5,
            ("wzp_relay_dropped_bytes_total", (("reason", "wrong-stream"),)): len(a.packet(0)),
            ("wzp_relay_member_packets_total", slot_a): 10,
            ("wzp_relay_member_packets_total", slot_b): 5,
            ("wzp_relay_member_bytes_total", slot_a): sum(map(len, sent_a)),
            ("wzp_relay_member_dropped_total", slot_a): 2,
            ("wzp_relay_member_loss_ratio", slot_a): pytest.approx(0.2, abs=1e-6),
            ("wzp_relay_member_rtt_seconds", slot_a): pytest.approx(0.4),
            ("wzp_relay_member_jitter_seconds", slot_a): pytest.approx(0.03),
        }
        assert {k: got.get(k) for k in expected} == expected
        assert 0 <= got[("wzp_relay_member_report_age_seconds", slot_a)] < TIMEOUT
        # b sent no report: no loss gauge for b
        assert ("wzp_relay_member_loss_ratio", slot_b) not in got
        # the process metrics are there too
        assert got[("process_cpu_seconds_total", ())] > 0
        # the relay's status shows the report as well
        members = relay.server.status()["rooms"]["porch"]["members"]
        assert members[0]["report"] == {
            "loss_percent": 20.0,
            "rtt_ms": 400,
            "jitter_ms": 30,
            "cap_kbps": 24,
        }


async def test_http_answers_only_get_metrics_and_an_idle_client_blocks_nothing() -> None:
    async with running_relay({"porch": RoomPolicy()}, metrics=("127.0.0.1", 0)) as relay:
        assert relay.server.metrics is not None
        port = relay.server.metrics.port
        base = f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(_get, f"{base}/"))[0] == 404
        assert (await asyncio.to_thread(_get, f"{base}/metrics", "POST"))[0] == 405
        status, _, body = await asyncio.to_thread(_get, f"{base}/metrics", "HEAD")
        assert status == 200 and body == ""
        # clients that connect and never send a request hold no one up
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CLIENTS - 1)]
        got = await scrape(port)
        assert got[("wzp_relay_members", (("room", "porch"),))] == 0
        # beyond MAX_CLIENTS at once, a connection is closed at once
        idle.append(await asyncio.open_connection("127.0.0.1", port))
        await until(lambda: len(relay.server.metrics._clients) == MAX_CLIENTS)  # type: ignore[union-attr]
        reader, refused = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        assert relay.server.metrics.refused == 1
        for _, writer in [*idle, (reader, refused)]:
            writer.close()


async def test_a_metrics_port_in_use_fails_the_start() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError):
            async with running_relay({"porch": RoomPolicy()}, metrics=("127.0.0.1", taken)):
                pass
    finally:
        blocker.close()
        await blocker.wait_closed()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('metrics = ""', None),
        ('metrics = "127.0.0.1:9464"', ("127.0.0.1", 9464)),
        ('metrics = "[::1]:9464"', ("::1", 9464)),
        ('metrics = "0.0.0.0:80"', ("0.0.0.0", 80)),
    ],
)
def test_config_metrics_values(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_config(text).metrics == expected


def test_config_metrics_is_off_by_default() -> None:
    assert parse_config("").metrics is None


@pytest.mark.parametrize(
    "value",
    ['"localhost:9464"', '"::1:9464"', '"[127.0.0.1]:9464"', '"127.0.0.1"', '"127.0.0.1:0"',
     '"127.0.0.1:70000"', '"127.0.0.1:x"', "9464", "true"],
)  # fmt: skip
def test_config_metrics_refuses_what_is_not_ip_port(value: str) -> None:
    with pytest.raises(ConfigErrors) as exc:
        parse_config(f"metrics = {value}\n")
    assert "line 1: metrics: must" in str(exc.value)
