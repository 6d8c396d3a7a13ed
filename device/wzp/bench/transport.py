"""``wzp bench transport``: media datagrams over real QUIC through a lossy link.

Two wzp QUIC endpoints on loopback, one in-process lossy UDP proxy between them
(seeded random loss, fixed one-way delay). For each point:

* **Delivery and queueing.** The client sends datagrams of wzp phase 1's GOOD tier
  (Opus24k, 20 ms, K=5 with one repair: 60 packets/s of ~100 bytes), each carrying its
  sequence number and send time. The proxy's tap sees when each one actually left the
  sender (what QUIC added: pacing, queueing), and the server counts what arrived.
  Delivered fraction is compared with what the link itself lost.
* **CPU.** A real call: the callee is a ``wzp listen`` process sending and hearing
  recorded speech, the caller runs here; the callee process's CPU per second of call
  (both directions of its call) is read from /proc. The ladder's top tier at 0 % loss
  (Opus 16 kbit/s, 60 ms) and whatever the controller picks at 30 %.

Fixed settings, seeded links; measured values are written, never tuned.
"""

from __future__ import annotations

import asyncio
import json
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
from ..daemon.identity_store import write_seed
from ..media.call import CallEngine
from ..media.codecs import make_frame_decoder, make_tier_encoder
from ..net.callrunner import CallRunner
from ..net.quic import WzpConnection, connect_wzp, serve_wzp
from ..net.udpproxy import UdpLossyProxy
from ..sim.link import LinkConfig

LOSSES = (0.0, 0.3, 0.5, 0.7)
DELAYS_S = (0.150, 0.400)
SEND_S = 8.0
PACKETS_PER_S = 60  # 50 source + 10 repair (K=5, ratio 0.2)
PAYLOAD = 100
_STAMP = struct.Struct(">Id")


async def _delivery_point(loss: float, delay: float, seed: int) -> dict[str, Any]:
    server_id, client_id = Identity.generate(), Identity.generate()
    received: set[int] = set()
    server_conns: list[WzpConnection] = []
    loop = asyncio.get_running_loop()

    def on_server(conn: WzpConnection) -> None:
        server_conns.append(conn)
        conn.on_datagram = lambda d: received.add(_STAMP.unpack_from(d)[0])

    def tap(direction: str, data: bytes) -> None:
        # QUIC encrypts: the tap cannot read our stamp, so departures are matched by order
        # below; here only the time of each client packet matters
        if direction == "up":
            taps.append(loop.time())

    taps: list[float] = []
    server = await serve_wzp("127.0.0.1", 0, server_id, on_server)
    port = server.port
    async with UdpLossyProxy(("127.0.0.1", port), LinkConfig(delay_s=delay), seed=seed,
                             tap=tap) as proxy:  # fmt: skip
        conn = await connect_wzp("127.0.0.1", proxy.port, client_id, server_id.fingerprint)
        proxy.set_config("both", LinkConfig(loss=loss, delay_s=delay))
        await asyncio.sleep(0.2)
        taps.clear()
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
        link = proxy.stats.up
        await conn.aclose()
    server.close()
    # the client's packets after the start, in order: data packets interleave with a few
    # QUIC control packets (ACKs); pair each datagram with the first departure not before it
    waits = []
    j = 0
    for t in sent_at:
        while j < len(taps) and taps[j] < t:
            j += 1
        if j < len(taps):
            waits.append((taps[j] - t) * 1000)
            j += 1
    link_loss = link.lost / link.sent if link.sent else 0.0
    delivered = len(received) / n
    return {
        "loss": loss,
        "one_way_delay_ms": delay * 1000,
        "datagrams_offered": n,
        "sent": sent,
        "dropped_by_transport": dropped,
        "delivered_fraction": round(delivered, 4),
        "link_loss_measured": round(link_loss, 4),
        "target_delivered_min": round((1 - loss) - 0.01, 4),
        "delivered_vs_link": round(delivered - (1 - link_loss), 4),
        "queueing_ms_p50": round(float(np.percentile(waits, 50)), 3) if waits else None,
        "queueing_ms_p99": round(float(np.percentile(waits, 99)), 3) if waits else None,
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


def run_transport(out: Path, seed: int = 1, log: Callable[[str], None] = print) -> dict:
    async def main() -> dict:
        points = []
        for delay in DELAYS_S:
            for loss in LOSSES:
                p = await _delivery_point(loss, delay, seed)
                log(
                    f"delivery loss {loss:.0%} delay {delay * 1000:.0f} ms: delivered "
                    f"{p['delivered_fraction']:.3f} (link kept {1 - p['link_loss_measured']:.3f}, "
                    f"target >= {p['target_delivered_min']:.2f}), queueing p99 "
                    f"{p['queueing_ms_p99']} ms, transport drops {p['dropped_by_transport']}"
                )
                points.append(p)
        cpu = []
        for loss in (0.0, 0.3):
            c = await _cpu_point(loss, 0.150, 10.0, seed)
            log(f"cpu loss {loss:.0%}: one handset process {c['percent_of_one_core']} % of a core")
            cpu.append(c)
        return {"delivery": points, "cpu": cpu}

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
        },
        "machine": platform.machine(),
        "python": platform.python_version(),
        **results,
        "cpu_seconds_total": round(time.process_time() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report
