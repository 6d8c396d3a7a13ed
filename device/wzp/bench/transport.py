"""``wzp bench transport``: media datagrams over real QUIC through a lossy link.

Two wzp QUIC endpoints on loopback, one in-process lossy UDP proxy between them
(seeded random loss, fixed one-way delay). For each point:

* **Delivery and queueing.** The client sends datagrams of wzp phase 1's GOOD tier
  (Opus24k, 20 ms, K=5 with one repair: 60 packets/s of 100 bytes, 25 s: 1500 a point),
  each carrying its sequence number and send time, and the server counts what arrived.
  The proxy's ``on_fate`` callback sees every client packet when it reaches the link
  (what QUIC added before that, pacing and queueing, is the queueing delay) and whether
  the link dropped it; the packets that carry our datagrams are told apart by their
  exact size (``DATAGRAM_PACKET_BYTES``, checked per point). The target is judged against
  the loss the link actually applied to those packets, since over n packets the realised
  loss of a p-loss link varies by sqrt(p (1 - p) / n) around p (1.3 % at 50 %, n = 1500)::

      delivered >= (1 - link_loss_of_datagram_packets) - 1 %,   queueing p99 <= 20 ms
      transport_loss = 1 - delivered - link_loss_of_datagram_packets

  The comparison with the nominal loss is reported too (``nominal_*``, with the binomial
  sd), as is the link's loss over all client packets (ACK-only ones included).
* **CPU.** A real call: the callee is a ``wzp listen`` process sending and hearing
  recorded speech, the caller runs here; the callee process's CPU per second of call
  (both directions of its call) is read from /proc. The ladder's top tier at 0 % loss
  (Opus 16 kbit/s, 60 ms) and whatever the controller picks at 30 %.

* **Connecting.** How often a call can be set up on a terrible link at all: QUIC
  handshakes through the proxy with the loss on from the first packet, random and
  Gilbert (mean burst 3 packets), at 30/50/70 %, 300 ms one way; ``HANDSHAKE_TRIES``
  tries a point (each its own seeded link), judged by the handset's dial timeout. Once
  as one handshake, whose retransmission timeout doubles after every lost flight (the
  baseline), once as :func:`~wzp.net.quic.connect_wzp` makes it, with a fresh attempt
  every :data:`~wzp.net.quic.ATTEMPT_EVERY_S`. The proxy sends replies to the newest
  client address only, so here a new attempt cuts the older ones off (each attempt has
  its own socket): the run measures starting over every 3 s, where a real path would
  let the older attempts go on as well.

Fixed settings, seeded links; measured values are written, never tuned.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.files import Discard, FileSource
from ..crypto.identity import Identity
from ..daemon.handset import DIAL_TIMEOUT_S
from ..daemon.identity_store import write_seed
from ..media.call import CallEngine
from ..media.codecs import make_frame_decoder, make_tier_encoder
from ..net.callrunner import CallRunner
from ..net.quic import ATTEMPT_EVERY_S, WzpConnection, connect_wzp, serve_wzp
from ..net.udpproxy import UdpLossyProxy
from ..sim.link import LinkConfig

LOSSES = (0.0, 0.3, 0.5, 0.7)
DELAYS_S = (0.150, 0.400)
SEND_S = 25.0  # 1500 datagrams a point: the binomial sd of a 50 % link's loss is 1.3 %
PACKETS_PER_S = 60  # 50 source + 10 repair (K=5, ratio 0.2)
PAYLOAD = 100
_STAMP = struct.Struct(">Id")
DELIVERY_MARGIN = 0.01  # the target: delivered >= (1 - link loss) - 1 %
QUEUEING_P99_MAX_MS = 20.0
# Which client->server UDP packets carry a test datagram. QUIC encrypts, so the proxy
# cannot read our stamp; but WzpConnection puts each DATAGRAM frame in its own UDP packet,
# so every such packet has the same size: a 1-RTT short header (1 flags byte + 8-byte
# connection id + 2-byte packet number), the frame (1 type byte + 2-byte length + the
# 100-byte payload) and the 16-byte AEAD tag, 130 bytes. Measured with the proxy's
# callbacks (25 s at 70 % loss, 150 ms): 1500 packets of exactly 130 bytes for 1500
# datagrams; ACK-only packets are 29-67 bytes on a clean link but, with many ACK ranges
# under heavy loss, a few reach 72-136 bytes (so a size *window* around the payload
# miscounts, an exact size does not); control-stream packets are 571, probes 1200. Every
# point checks the rule: ``datagram_packets_seen`` must equal ``sent``
# (``datagram_packet_rule_checked``).
DATAGRAM_PACKET_BYTES = PAYLOAD + 30


HANDSHAKE_LOSSES = (0.3, 0.5, 0.7)
HANDSHAKE_MODELS = (("random", 1.0), ("bursty", 3.0))
HANDSHAKE_DELAY_S = 0.300
HANDSHAKE_TRIES = 40


def _is_datagram_packet(data: bytes) -> bool:
    return len(data) == DATAGRAM_PACKET_BYTES


async def _delivery_point(loss: float, delay: float, seed: int) -> dict[str, Any]:
    server_id, client_id = Identity.generate(), Identity.generate()
    received: set[int] = set()
    server_conns: list[WzpConnection] = []
    loop = asyncio.get_running_loop()

    def on_server(conn: WzpConnection) -> None:
        server_conns.append(conn)
        conn.on_datagram = lambda d: received.add(_STAMP.unpack_from(d)[0])

    # every client->server packet while measuring: (time it reached the proxy, is it one of
    # our datagram packets, did the link deliver it)
    departures: list[tuple[float, bool, bool]] = []
    measuring = False

    def on_fate(direction: str, data: bytes, delivered: bool) -> None:
        if measuring and direction == "up":
            departures.append((loop.time(), _is_datagram_packet(data), delivered))

    server = await serve_wzp("127.0.0.1", 0, server_id, on_server)
    port = server.port
    async with UdpLossyProxy(("127.0.0.1", port), LinkConfig(delay_s=delay), seed=seed,
                             on_fate=on_fate) as proxy:  # fmt: skip
        conn = await connect_wzp("127.0.0.1", proxy.port, client_id, server_id.fingerprint)
        proxy.set_config("both", LinkConfig(loss=loss, delay_s=delay))
        await asyncio.sleep(0.2)
        measuring = True
        sent_at: list[float] = []
        n = int(SEND_S * PACKETS_PER_S)
        start = loop.time()
        sent = dropped = 0
        for i in range(n):
            due = start + i / PACKETS_PER_S
            await asyncio.sleep(max(0.0, due - loop.time()))
            t = loop.time()
            ok = conn.send_datagram(_STAMP.pack(i, t) + bytes(PAYLOAD - _STAMP.size))
            if ok:
                sent += 1
                sent_at.append(t)
            else:
                dropped += 1
        await asyncio.sleep(delay * 2 + 0.5)
        measuring = False
        await conn.aclose()
    server.close()

    all_up = len(departures)
    all_up_lost = sum(not kept for _, _, kept in departures)
    data_pkts = [(t, kept) for t, is_data, kept in departures if is_data]
    seen = len(data_pkts)
    link_lost = sum(not kept for _, kept in data_pkts)
    # queueing: what QUIC added between send_datagram and the packet reaching the proxy.
    # Datagram packets leave in send order, one each; pair each datagram with the first
    # datagram packet not before it (the identity pairing when seen == sent).
    waits = []
    j = 0
    for t in sent_at:
        while j < seen and data_pkts[j][0] < t:
            j += 1
        if j < seen:
            waits.append((data_pkts[j][0] - t) * 1000)
            j += 1
    delivered = len(received) / n
    link_loss = link_lost / seen if seen else 0.0
    target = (1 - link_loss) - DELIVERY_MARGIN
    nominal_sd = math.sqrt(loss * (1 - loss) / n)
    p50 = round(float(np.percentile(waits, 50)), 3) if waits else None
    p99 = round(float(np.percentile(waits, 99)), 3) if waits else None
    return {
        "loss": loss,
        "one_way_delay_ms": delay * 1000,
        "datagrams_offered": n,
        "sent": sent,
        "dropped_by_transport": dropped,
        "datagram_packets_seen": seen,
        "datagram_packets_lost_by_link": link_lost,
        "datagram_packet_rule_checked": seen == sent,  # the size rule found every datagram
        "delivered_fraction": round(delivered, 4),
        "link_loss_of_datagram_packets": round(link_loss, 4),
        # what the transport lost beyond the link (refused sends, datagrams never put on
        # the wire, packets the link delivered but the server did not hand up)
        "transport_loss": round(1 - delivered - link_loss, 4) + 0.0,  # + 0.0: never -0.0
        "transport_lost_datagrams": n - len(received) - link_lost,
        "target_delivered_min": round(target, 4),
        "meets_delivery_target": delivered >= target,
        "queueing_ms_p50": p50,
        "queueing_ms_p99": p99,
        "meets_queueing_target": p99 is not None and p99 <= QUEUEING_P99_MAX_MS,
        # informational: against the *nominal* loss the comparison includes the link's
        # sampling noise (binomial sd of the realised loss over n packets)
        "nominal_target_delivered_min": round((1 - loss) - DELIVERY_MARGIN, 4),
        "nominal_binomial_sd": round(nominal_sd, 4),
        "delivered_vs_nominal_in_sd": (
            round((delivered - (1 - loss)) / nominal_sd, 2) if nominal_sd else None
        ),
        "meets_nominal_delivery_target": delivered >= (1 - loss) - DELIVERY_MARGIN,
        # every client->server packet (ACK-only and control ones too), for reference
        "link_loss_all_client_packets": round(all_up_lost / all_up, 4) if all_up else 0.0,
    }


async def _handshake_point(
    loss: float, model: str, burst: float, attempt_every: float | None, seed: int
) -> dict[str, Any]:
    """``HANDSHAKE_TRIES`` connects at once, each through its own seeded lossy proxy."""
    server_id = Identity.generate()
    server = await serve_wzp("127.0.0.1", 0, server_id, lambda conn: None)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> float | None:
        cfg = LinkConfig(loss=loss, burst=burst, delay_s=HANDSHAKE_DELAY_S)
        async with UdpLossyProxy(("127.0.0.1", server.port), cfg, seed=seed * 100_003 + i) as proxy:
            start = loop.time()
            try:
                conn = await connect_wzp("127.0.0.1", proxy.port, Identity.generate(),
                                         server_id.fingerprint, timeout=DIAL_TIMEOUT_S,
                                         attempt_every=attempt_every)  # fmt: skip
            except (TimeoutError, ConnectionError):
                return None
            took = loop.time() - start
            conn.close()
            return took

    try:
        results = await asyncio.gather(*(one(i) for i in range(HANDSHAKE_TRIES)))
    finally:
        server.close()
    times = sorted(t for t in results if t is not None)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(times, q)), 2) if times else None

    return {
        "loss": loss,
        "model": model,
        "mean_burst": burst,
        "attempt_every_s": attempt_every,
        "tries": HANDSHAKE_TRIES,
        "connected": len(times),
        "connected_fraction": round(len(times) / HANDSHAKE_TRIES, 3),
        "seconds_p50": pct(50),
        "seconds_p90": pct(90),
        "seconds_max": round(times[-1], 2) if times else None,
    }


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_point(loss: float, delay: float, seconds: float, seed: int) -> dict[str, Any]:
    """CPU of one handset process (``wzp listen``) during a full-duplex call over QUIC.

    The callee runs as its own process, sending recorded speech and playing what it
    hears; its CPU (both directions of its call, QUIC, crypto, codecs, FEC, jitter
    buffer) is read from /proc. The caller and the lossy proxy run here.
    """
    from .speech import DEFAULT_SPEECH

    a_id, b_id = Identity.generate(), Identity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        seed_path = Path(tmp) / "b.seed"
        write_seed(seed_path, b_id.seed_bytes())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wzp.cli", "listen", "--identity", str(seed_path),
            "--port", str(port), "--host", "127.0.0.1", "--once", "--answer-after", "0",
            "--in", str(DEFAULT_SPEECH),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 30)
            async with UdpLossyProxy(("127.0.0.1", port), LinkConfig(delay_s=delay),
                                     seed=seed) as proxy:  # fmt: skip
                conn = await connect_wzp("127.0.0.1", proxy.port, a_id, b_id.fingerprint)
                proxy.set_config("both", LinkConfig(loss=loss, delay_s=delay))
                engine = CallEngine(a_id, make_tier_encoder, make_frame_decoder)
                src = FileSource(DEFAULT_SPEECH, loop=True)
                runner = CallRunner(engine, conn, src, Discard())
                runner.dial(b_id.fingerprint)
                task = asyncio.create_task(runner.run(seconds + 4))
                while engine.media is None and not task.done():
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.5)
                c0, w0 = _proc_cpu_seconds(proc.pid), time.monotonic()
                await asyncio.sleep(seconds)
                cpu, wall = _proc_cpu_seconds(proc.pid) - c0, time.monotonic() - w0
                tier = engine.media.tier.name if engine.media else "-"
                await task
                await conn.aclose(runner.close_phrase())
            await asyncio.wait_for(proc.wait(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return {
        "loss": loss,
        "one_way_delay_ms": delay * 1000,
        "caller_tier_at_end": tier,
        "call_seconds": round(wall, 2),
        "handset_process_cpu_per_call_second": round(cpu / wall, 4),
        "percent_of_one_core": round(100 * cpu / wall, 2),
    }


def _describe(p: dict[str, Any]) -> str:
    sd = p["delivered_vs_nominal_in_sd"]
    nominal = f", {sd:+} sd from nominal" if sd is not None else ""
    return (
        f"delivery loss {p['loss']:.0%} delay {p['one_way_delay_ms']:.0f} ms: delivered "
        f"{p['delivered_fraction']:.4f}{nominal}; link lost "
        f"{p['link_loss_of_datagram_packets']:.4f} of our datagram packets, target >= "
        f"{p['target_delivered_min']:.4f} {'met' if p['meets_delivery_target'] else 'MISSED'}; "
        f"transport loss {p['transport_loss']:.4f}; queueing p50 {p['queueing_ms_p50']} "
        f"p99 {p['queueing_ms_p99']} ms {'met' if p['meets_queueing_target'] else 'MISSED'}"
    )


def run_transport(out: Path, seed: int = 1, log: Callable[[str], None] = print) -> dict:
    async def main() -> dict:
        points = []
        for delay in DELAYS_S:
            for loss in LOSSES:
                p = await _delivery_point(loss, delay, seed)
                log(_describe(p))
                points.append(p)
        handshakes = []
        for model, burst in HANDSHAKE_MODELS:
            for loss in HANDSHAKE_LOSSES:
                for every in (None, ATTEMPT_EVERY_S):
                    h = await _handshake_point(loss, model, burst, every, seed)
                    how = "one handshake" if every is None else f"attempts every {every:g} s"
                    log(
                        f"connect {model} {loss:.0%} ({how}): {h['connected']}/{h['tries']} "
                        f"within {DIAL_TIMEOUT_S:g} s, p50 {h['seconds_p50']} s, "
                        f"p90 {h['seconds_p90']} s"
                    )
                    handshakes.append(h)
        cpu = []
        for loss in (0.0, 0.3):
            c = await _cpu_point(loss, 0.150, 10.0, seed)
            log(f"cpu loss {loss:.0%}: one handset process {c['percent_of_one_core']} % of a core")
            cpu.append(c)
        return {"delivery": points, "handshakes": handshakes, "cpu": cpu}

    t0 = time.process_time()
    results = asyncio.run(main())
    report = {
        "benchmark": "wzp bench transport",
        "settings": {
            "packets_per_s": PACKETS_PER_S,
            "payload_bytes": PAYLOAD,
            "send_seconds": SEND_S,
            "seed": seed,
            "congestion_control": "wzp-voice",
            "datagram_packet_bytes": DATAGRAM_PACKET_BYTES,
            "delivery_target": "delivered_fraction >= (1 - link_loss_of_datagram_packets)"
            f" - {DELIVERY_MARGIN}",
            "queueing_target": f"queueing_ms_p99 <= {QUEUEING_P99_MAX_MS}",
            "handshake_one_way_delay_ms": HANDSHAKE_DELAY_S * 1000,
            "handshake_timeout_s": DIAL_TIMEOUT_S,
        },
        "machine": platform.machine(),
        "python": platform.python_version(),
        "all_delivery_targets_met": all(
            p["meets_delivery_target"] and p["meets_queueing_target"] for p in results["delivery"]
        ),
        **results,
        "cpu_seconds_total": round(time.process_time() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report
