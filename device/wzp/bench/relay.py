"""``wzp bench relay``: concurrent two-member calls through a ``wzp relay`` process.

For each number of concurrent calls (10, 20, 40) the relay runs as its own process
(``python -m wzp.cli relay``, loopback, open rooms) and this process holds every member:
two real QUIC clients per call, each joining room ``call-N`` with a signed Join and
sending 50 packets/s of GOOD-tier-sized media datagrams (:data:`DATAGRAM_BYTES`, a valid
header with the member's slot as stream byte, a quality report in one packet of
:data:`REPORT_EVERY`) for a warm-up, then a measured window. Each member starts at a
seeded random phase of the 20 ms period, as independent handsets would.

Measured over the window:

* **Relay CPU**: utime + stime of the relay process from ``/proc/PID/stat``, as % of one
  core. The bench process's own CPU is reported too (``clients_cpu_percent``): all the
  members share this machine with the relay.
* **Latency**: each packet carries its send time (``time.monotonic()`` in this process,
  read just before ``send_datagram``); the receiving member (same process, same clock)
  takes the difference when aioquic hands the datagram up. That end-to-end time holds the
  members' own QUIC work and event-loop queueing as well as the relay's. So each point
  also runs a **baseline**: the same number of calls, the same packets, the same clients,
  but each call is a direct QUIC connection (one member the server) through a trivial
  UDP forwarder process (:func:`forwarder_main`: recv, send, nothing else), i.e. the same
  two UDP hops through another process without the relay's QUIC and room work.
  ``added_p50_ms`` / ``added_p99_ms`` are relay percentile minus baseline percentile: a
  difference of percentiles (the two runs' packets cannot be paired), an estimate of what
  the relay adds, reported next to both raw distributions. ``other_cpu_percent`` is what
  the rest of the machine used meanwhile (/proc/stat): on a shared machine, a point with
  a large one measured contention, not the relay.
* **Drops**: packets sent in the window that never arrived (waiting
  :data:`DRAIN_S` after the last send), sends the clients' QUIC refused, and the relay's
  own drop counters (``--status`` over its control socket).

Target (issue 6): 20 concurrent calls within one core of relay CPU with p99 added latency
<= 10 ms. Fixed settings and seeded phases; measured values are written, never tuned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import os
import platform
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..crypto.handshake import sign_join
from ..crypto.identity import Identity
from ..daemon.control import request
from ..daemon.identity_store import write_seed
from ..net.quic import WzpConnection, connect_wzp, serve_wzp
from ..proto.header import HEADER_LEN, REPORT_LEN, MediaHeader, QualityReport, build_datagram
from ..proto.profiles import GOOD
from ..proto.signal import Join, RoomUpdate

__all__ = [
    "CALLS",
    "DATAGRAM_BYTES",
    "MEASURE_S",
    "PACKETS_PER_S",
    "WARMUP_S",
    "forwarder_main",
    "run_relay_bench",
]

CALLS = (10, 20, 40)
PACKETS_PER_S = 50  # one GOOD-tier (20 ms) frame per packet
#: a GOOD-tier datagram (Opus 24 kbit/s, 20 ms: 60 bytes of Opus, + header, tag, framing),
#: the size ``wzp bench transport`` uses for that tier
DATAGRAM_BYTES = 100
REPORT_EVERY = 5  # one quality report per FEC block of 5
WARMUP_S = 2.0
MEASURE_S = 10.0
DRAIN_S = 0.5
TARGET_CALLS = 20
TARGET_CPU_PERCENT = 100.0
TARGET_ADDED_P99_MS = 10.0
#: a point where other processes used more than this (% of one core) measured contention
CONTENDED_OTHER_CPU_PERCENT = 15.0
HOST = "127.0.0.1"
_STAMP = struct.Struct(">IId")  # member index, packet index, send time
_REPORT = QualityReport.from_measured(2.0, 40, 3, 24)


# --------------------------------------------------------------------------- helpers


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; /proc/stat: not idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _identity(seed: int, label: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"wzp bench relay {seed} {label}".encode()).digest())


def _packet(member: int, slot: int, seq: int, now: float) -> bytes:
    """A valid media datagram of :data:`DATAGRAM_BYTES` carrying (member, seq, send time)."""
    with_report = seq % REPORT_EVERY == 0
    header = MediaHeader(
        codec=int(GOOD.codec),
        has_report=with_report,
        ratio_e=MediaHeader.ratio_field(GOOD.fec_ratio),
        seq=seq & 0xFFFF,
        ts=(seq * 960) & 0xFFFF_FFFF,
        block=(seq // REPORT_EVERY) & 0xFF,
        symbol=seq % REPORT_EVERY,
        stream=slot,
    )
    body_len = DATAGRAM_BYTES - HEADER_LEN - (REPORT_LEN if with_report else 0)
    body = _STAMP.pack(member, seq, now).ljust(body_len, b"\x5a")
    return build_datagram(header, body, _REPORT if with_report else None)


@dataclass
class _Member:
    index: int
    conn: WzpConnection
    slot: int = 0
    phase: float = 0.0
    sent: int = 0
    refused: int = 0


@dataclass
class _Tally:
    """What the receiving members saw, for the packets sent inside the window."""

    window: tuple[float, float] = (float("inf"), float("inf"))
    latencies: list[float] = field(default_factory=list)
    received: int = 0

    def on_datagram(self, data: bytes) -> None:
        _, _, sent_at = _STAMP.unpack_from(data, HEADER_LEN)
        if self.window[0] <= sent_at < self.window[1]:
            self.latencies.append(time.monotonic() - sent_at)
            self.received += 1


@dataclass(frozen=True)
class _Timing:
    warmup_s: float = WARMUP_S
    measure_s: float = MEASURE_S


async def _drive(members: Sequence[_Member], tally: _Tally, timing: _Timing) -> dict[str, Any]:
    """Send 50 packets/s from every member: warm-up, window, drain. Counts of the window."""
    period = 1.0 / PACKETS_PER_S
    start = time.monotonic() + 0.05
    window = (start + timing.warmup_s, start + timing.warmup_s + timing.measure_s)
    tally.window = window
    heap = [(start + m.phase, m.index) for m in members]
    heapq.heapify(heap)
    by_index = {m.index: m for m in members}
    sent_in_window = refused_in_window = 0
    late: list[float] = []
    while heap:
        due, index = heap[0]
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
            continue
        heapq.heappop(heap)
        m = by_index[index]
        t = time.monotonic()
        ok = m.conn.send_datagram(_packet(m.index, m.slot, m.sent, t))
        m.sent += 1
        if window[0] <= t < window[1]:
            late.append(t - due)
            if ok:
                sent_in_window += 1
            else:
                refused_in_window += 1
        if not ok:
            m.refused += 1
        if due + period < window[1]:
            heapq.heappush(heap, (due + period, index))
    await asyncio.sleep(DRAIN_S)
    return {
        "sent": sent_in_window,
        "refused_by_client_quic": refused_in_window,
        "send_lateness_ms_p99": round(float(np.percentile(late, 99)) * 1000, 3) if late else None,
    }


def _phases(n: int, seed: int, calls: int) -> list[float]:
    rng = random.Random(f"{seed}/{calls}")
    return [rng.random() / PACKETS_PER_S for _ in range(n)]


def _latency_summary(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


async def _measure(
    pid: int, members: Sequence[_Member], tally: _Tally, timing: _Timing
) -> dict[str, Any]:
    """Run :func:`_drive` and read both processes' CPU over the window."""
    task = asyncio.create_task(_drive(members, tally, timing))
    await asyncio.sleep(0.05 + timing.warmup_s)
    c0, b0, m0 = _proc_cpu_seconds(pid), time.process_time(), _machine_busy_seconds()
    w0 = time.monotonic()
    await asyncio.sleep(timing.measure_s)
    c1, b1, m1 = _proc_cpu_seconds(pid), time.process_time(), _machine_busy_seconds()
    wall = time.monotonic() - w0
    counts = await task
    lost = counts["sent"] - tally.received
    server, clients = c1 - c0, b1 - b0
    return {
        "server_cpu_percent": round(100 * server / wall, 1),
        "clients_cpu_percent": round(100 * clients / wall, 1),
        # everything else this machine ran meanwhile (other processes compete for its cores)
        "other_cpu_percent": round(max(0.0, 100 * (m1 - m0 - server - clients) / wall), 1),
        **counts,
        "received": tally.received,
        "lost": lost,
        "lost_fraction": round(lost / counts["sent"], 5) if counts["sent"] else None,
        **_latency_summary(tally.latencies),
    }


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _close_all(conns: Sequence[WzpConnection]) -> None:
    await asyncio.gather(*(c.aclose(timeout=1.0) for c in conns), return_exceptions=True)


# --------------------------------------------------------------------------- the relay


async def _relay_point(calls: int, seed: int, timing: _Timing) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="wzpbr-", dir="/tmp"))  # short: a Unix socket path
    relay_id = _identity(seed, "relay")
    write_seed(tmp / "relay.seed", relay_id.seed_bytes())
    port = _free_udp_port()
    (tmp / "relay.toml").write_text(
        f'listen = ["{HOST}"]\nport = {port}\nidentity = "{tmp}/relay.seed"\n'
        f'control_socket = "{tmp}/c.sock"\nopen_rooms = true\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wzp.cli", "relay", "--config", str(tmp / "relay.toml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    members: list[_Member] = []
    tally = _Tally()
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if b"fingerprint" not in line:
            raise RuntimeError(f"wzp relay did not start: {line!r}")
        phases = _phases(2 * calls, seed, calls)
        for i in range(2 * calls):
            room = f"call-{i // 2}"
            ident = _identity(seed, f"member {i}")
            conn = await connect_wzp(HOST, port, ident, relay_id.fingerprint, server_name=room)
            sig = sign_join(ident, relay_id.fingerprint, room)
            conn.send_message(Join(identity_pub=ident.ed25519_pub, room=room, signature=sig))
            update = await asyncio.wait_for(conn.recv_message(), 10)
            if not isinstance(update, RoomUpdate):
                raise RuntimeError(f"member {i} was not seated: {update!r}")
            conn.on_datagram = tally.on_datagram
            members.append(_Member(i, conn, update.you, phases[i]))
        result = await _measure(proc.pid, members, tally, timing)
        status = await asyncio.to_thread(request, tmp / "c.sock", "status")
        c = status["counters"]
        result["relay_counters"] = {
            "datagrams_received": c["datagrams_received"],
            "datagrams_forwarded": c["datagrams_forwarded"],
            "datagram_drops": c["datagram_drops"],
            "send_drops": c["send_drops"],
        }
        return result
    finally:
        await _close_all([m.conn for m in members])
        await _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the baseline


class _Forwarder:
    """Client <-> target UDP, one connected upstream socket per client address."""

    def __init__(self, listen: socket.socket, target: tuple[str, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.listen = listen
        self.target = target
        self.up: dict[Any, socket.socket] = {}
        self.loop.add_reader(listen.fileno(), self._from_clients)

    def _from_clients(self) -> None:
        while True:
            try:
                data, addr = self.listen.recvfrom(65535)
            except BlockingIOError:
                return
            up = self.up.get(addr)
            if up is None:
                up = self.up[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.setblocking(False)
                up.connect(self.target)
                self.loop.add_reader(up.fileno(), self._from_target, up, addr)
            with contextlib.suppress(OSError):
                up.send(data)

    def _from_target(self, up: socket.socket, addr: Any) -> None:
        while True:
            try:
                data = up.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error from the target: the next datagram may be fine
            with contextlib.suppress(OSError):
                self.listen.sendto(data, addr)


def forwarder_main(target_port: int) -> None:
    """A trivial UDP forwarder process for the baseline: prints its port, runs until
    killed."""

    async def main() -> None:
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listen.bind((HOST, 0))
        listen.setblocking(False)
        _Forwarder(listen, (HOST, target_port))
        print(listen.getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _baseline_point(calls: int, seed: int, timing: _Timing) -> dict[str, Any]:
    server_id = _identity(seed, "baseline server")
    answering: list[WzpConnection] = []
    server = await serve_wzp(HOST, 0, server_id, answering.append)
    code = f"from wzp.bench.relay import forwarder_main; forwarder_main({server.port})"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    members: list[_Member] = []
    tally = _Tally()
    try:
        assert proc.stdout is not None
        fwd_port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        phases = _phases(2 * calls, seed, calls)
        for call in range(calls):
            ident = _identity(seed, f"member {2 * call}")
            conn = await connect_wzp(HOST, fwd_port, ident, server_id.fingerprint)
            while len(answering) <= call:
                await asyncio.sleep(0.001)
            for i, c in ((2 * call, conn), (2 * call + 1, answering[call])):
                c.on_datagram = tally.on_datagram
                members.append(_Member(i, c, 1 + i % 2, phases[i]))
        return await _measure(proc.pid, members, tally, timing)
    finally:
        await _close_all([m.conn for m in members if m.index % 2 == 0])
        server.close()
        await _stop(proc)


# --------------------------------------------------------------------------- the run


def _describe(p: dict[str, Any]) -> str:
    r, b = p["relay"], p["baseline"]
    return (
        f"{p['calls']} calls: relay CPU {r['server_cpu_percent']} % of a core "
        f"(clients {r['clients_cpu_percent']} %, other processes {r['other_cpu_percent']} %); "
        f"end-to-end p50/p99 {r['p50_ms']}/"
        f"{r['p99_ms']} ms via relay, {b['p50_ms']}/{b['p99_ms']} ms via a plain forwarder "
        f"(added p99 {p['added_p99_ms']} ms); lost {r['lost']}/{r['sent']} via relay, "
        f"{b['lost']}/{b['sent']} baseline"
    )


def run_relay_bench(
    out: Path,
    seed: int = 1,
    log: Callable[[str], None] = print,
    *,
    calls: Sequence[int] = CALLS,
    measure_s: float = MEASURE_S,
    warmup_s: float = WARMUP_S,
) -> dict[str, Any]:
    """Run every point, write ``out`` (JSON) and return the report.

    ``calls``, ``measure_s`` and ``warmup_s`` are for a quick check only (the test); the
    results file is made with the defaults.
    """
    timing = _Timing(warmup_s, measure_s)

    async def main() -> list[dict[str, Any]]:
        points = []
        for n in calls:
            relay = await _relay_point(n, seed, timing)
            baseline = await _baseline_point(n, seed, timing)
            added = {
                k: round(relay[f"{k}_ms"] - baseline[f"{k}_ms"], 3)
                if relay[f"{k}_ms"] is not None and baseline[f"{k}_ms"] is not None
                else None
                for k in ("p50", "p99")
            }
            point: dict[str, Any] = {
                "calls": n,
                "members": 2 * n,
                "relay": relay,
                "baseline": baseline,
                "added_p50_ms": added["p50"],
                "added_p99_ms": added["p99"],
            }
            point["meets_target"] = (
                relay["server_cpu_percent"] <= TARGET_CPU_PERCENT
                and added["p99"] is not None
                and added["p99"] <= TARGET_ADDED_P99_MS
            )
            log(_describe(point))
            points.append(point)
        return points

    t0 = time.monotonic()
    points = asyncio.run(main())
    at_target = [p for p in points if p["calls"] == TARGET_CALLS]
    report = {
        "benchmark": "wzp bench relay",
        "settings": {
            "calls": list(calls),
            "members_per_call": 2,
            "packets_per_s_per_member": PACKETS_PER_S,
            "datagram_bytes": DATAGRAM_BYTES,
            "report_every_packets": REPORT_EVERY,
            "warmup_s": warmup_s,
            "measure_s": measure_s,
            "drain_s": DRAIN_S,
            "seed": seed,
            "relay": "python -m wzp.cli relay, its own process, open rooms, loopback",
            "baseline": "the same clients and packets, each call one direct QUIC connection "
            "through a trivial UDP forwarder process",
            "latency": "receive time minus send time, both time.monotonic() in the bench "
            "process; added = relay percentile - baseline percentile",
            "target": f"{TARGET_CALLS} calls: relay server_cpu_percent <= {TARGET_CPU_PERCENT} "
            f"and added_p99_ms <= {TARGET_ADDED_P99_MS}",
        },
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "target_met": bool(at_target) and all(p["meets_target"] for p in at_target),
        # points during which other processes competed for this machine's cores
        "contended_points": [
            p["calls"]
            for p in points
            if max(p["relay"]["other_cpu_percent"], p["baseline"]["other_cpu_percent"])
            > CONTENDED_OTHER_CPU_PERCENT
        ],
        "points": points,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report
