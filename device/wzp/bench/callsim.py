"""A simulated call direction: speaker -> media endpoint -> simulated link -> listener.

Time advances in sound-card periods (20 ms). The speaker's endpoint captures the
speech frame by frame and sends its datagrams over one :class:`~wzp.sim.link.Link`;
the listener's endpoint plays out every period and sends its quality reports back
(keep-alives) over the reverse link, closing the quality loop exactly as in a call.
Everything is seeded and simulated: no sockets, no clocks, repeatable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..crypto.handshake import Ephemeral, Role, initial_keys
from ..crypto.media import MediaCrypto
from ..fec.backend import FecBackend, default_backend
from ..media.endpoint import MediaEndpoint
from ..media.ladder import Tier
from ..media.playout import FrameDecoder, Played
from ..media.sender import TierEncoder
from ..sim.link import Link, LinkConfig, derive_seed

SAMPLE_RATE = 48_000
PERIOD_S = 0.020
PERIOD = 960
#: QUIC short header + UDP + IPv4 per datagram, counted in wire rates
WIRE_OVERHEAD = 60


class ReliableSim:
    """Signalling over a lossy link the way a QUIC stream carries it: every attempt
    crosses ``link`` and may be lost; a lost attempt is sent again after ``rto_s``."""

    def __init__(self, link: Link, rto_s: float) -> None:
        self.link = link
        self.rto_s = rto_s
        self._pending: list[tuple[float, int, object]] = []  # (retry at, id, message)
        self._msgs: dict[int, object] = {}
        self._next_id = 0

    def send(self, msg: object, now: float) -> None:
        self._msgs[self._next_id] = msg
        self._pending.append((now, self._next_id, msg))
        self._next_id += 1

    def poll(self, now: float) -> list[tuple[float, object]]:
        retry = [(t, i, m) for t, i, m in self._pending if t <= now]
        self._pending = [(t, i, m) for t, i, m in self._pending if t > now]
        for _, i, m in retry:
            self.link.send(i.to_bytes(4, "big"), now)
            self._pending.append((now + self.rto_s, i, m))
        out = []
        for at, data in self.link.deliver(now):
            i = int.from_bytes(data, "big")
            if i in self._msgs:
                out.append((at, self._msgs.pop(i)))
                self._pending = [(t, j, m) for t, j, m in self._pending if j != i]
        return out


@dataclass
class CallResult:
    output: np.ndarray  # the listener's playout, 48 kHz, one period per tick from t=0
    played: list[Played]
    send_times: dict[int, float]  # media ts (ms) of each source frame -> send time
    wire_bytes_fwd: int
    wire_bytes_rev: int
    packets_fwd: int
    duration_s: float
    tiers_used: dict[str, int]
    tier_changes: int
    sender_stats: dict[str, int]
    receiver_drops: dict[str, int]
    link_loss_fwd: float
    recovered: int
    recommendations: int = 0
    playout_stats: dict[str, int] = field(default_factory=dict)


def _crypto_pair() -> tuple[MediaCrypto, MediaCrypto, MediaCrypto, MediaCrypto]:
    """Real call keys (fresh ephemerals): (A tx, A rx, B tx, B rx)."""
    ea, eb = Ephemeral.generate(), Ephemeral.generate()
    ka = initial_keys(ea, eb.public, Role.CALLER)
    kb = initial_keys(eb, ea.public, Role.CALLEE)
    a = MediaCrypto(Role.CALLER, ka, 0.0)
    b = MediaCrypto(Role.CALLEE, kb, 0.0)
    return a, a, b, b


def simulate_call(
    speech48: np.ndarray,
    *,
    ladder: tuple[Tier, ...],
    encoder_factory: Callable[[], TierEncoder],
    decoder_factory: Callable[[], FrameDecoder],
    link: LinkConfig,
    seed: int,
    start: Tier | None = None,
    tail_s: float = 1.5,
    backend: FecBackend | None = None,
    encrypt: bool = True,
    measure_from_s: float = 0.0,
) -> CallResult:
    """Send ``speech48`` (48 kHz int16) from A to B over ``link`` (both directions alike).

    Wire bytes and tiers are counted from ``measure_from_s`` on (after a warm-up).
    """
    backend = backend or default_backend()
    a_tx, a_rx, b_tx, b_rx = _crypto_pair() if encrypt else (None, None, None, None)
    speaker = MediaEndpoint(
        encoder_factory(), decoder_factory, a_tx, a_rx, ladder, start, backend=backend
    )
    listener = MediaEndpoint(
        encoder_factory(), decoder_factory, b_tx, b_rx, ladder, start, backend=backend,
        keep_log=True,
    )  # fmt: skip
    fwd = Link(link, derive_seed(seed, "fwd"))
    rev = Link(link, derive_seed(seed, "rev"))
    signalling = ReliableSim(Link(link, derive_seed(seed, "sig")), 2 * link.delay_s + 0.2)
    rtt_ms = 2 * link.delay_s * 1000
    speaker.rtt_ms = listener.rtt_ms = rtt_ms

    n_periods = int(np.ceil(len(speech48) / PERIOD + tail_s / PERIOD_S))
    out = np.zeros(n_periods * PERIOD, dtype=np.int16)
    send_times: dict[int, float] = {}
    pending = np.zeros(0, dtype=np.int16)
    pos = 0
    wire_fwd = wire_rev = packets_fwd = 0
    ended = False
    tiers_at_start: dict[str, int] | None = None
    for i in range(n_periods):
        now = i * PERIOD_S
        sent: list[bytes] = []
        # the speaker: the period that just ended [now - 20 ms, now) was captured; a frame
        # is complete, encoded and sent when enough is buffered
        if pos < len(speech48):
            chunk = speech48[pos : pos + PERIOD]
            pos += PERIOD
            pending = np.concatenate((pending, chunk))
        while len(pending) >= speaker.frame_samples or (pos >= len(speech48) and len(pending) > 0):
            n = speaker.frame_samples
            frame = pending[:n]
            if len(frame) < n:
                frame = np.concatenate((frame, np.zeros(n - len(frame), dtype=np.int16)))
            pending = pending[n:]
            ts = speaker.sender._ts
            send_times[ts] = now
            sent += speaker.capture(frame, now)
        if pos >= len(speech48) and not len(pending) and not ended:
            sent += speaker.stop_sending()
            ended = True
        for d in sent:
            fwd.send(d, now)
        sent_rev = listener.tick(now)
        for d in sent_rev:
            rev.send(d, now)
        for d in speaker.tick(now):
            fwd.send(d, now)
            sent.append(d)
        if now >= measure_from_s:
            if tiers_at_start is None:
                tiers_at_start = dict(speaker.sender.tiers_used)
            wire_fwd += sum(len(d) + WIRE_OVERHEAD for d in sent)
            wire_rev += sum(len(d) + WIRE_OVERHEAD for d in sent_rev)
            packets_fwd += len(sent)
        for at, d in fwd.deliver(now):
            listener.on_datagram(d, at)
        for at, d in rev.deliver(now):
            speaker.on_datagram(d, at)
        for msg in listener.take_signals():
            signalling.send(msg, now)
        for at, msg in signalling.poll(now):
            speaker.on_quality_update(msg, at)  # type: ignore[arg-type]
        out[i * PERIOD : (i + 1) * PERIOD] = listener.playout(now)

    rx = listener.receiver.streams.get(0)
    sender = speaker.sender
    return CallResult(
        output=out,
        played=list(listener.receiver.logs.get(0, [])),
        send_times=send_times,
        wire_bytes_fwd=wire_fwd,
        wire_bytes_rev=wire_rev,
        packets_fwd=packets_fwd,
        duration_s=n_periods * PERIOD_S - measure_from_s,
        tiers_used={
            name: n - (tiers_at_start or {}).get(name, 0)
            for name, n in sender.tiers_used.items()
            if n - (tiers_at_start or {}).get(name, 0) > 0
        },
        tier_changes=sender.stats.tier_changes,
        sender_stats=vars(sender.stats).copy(),
        receiver_drops={k.value: v for k, v in listener.receiver.drops.items()},
        link_loss_fwd=fwd.stats.loss_rate,
        recovered=rx.recovered if rx else 0,
        recommendations=speaker.controller.recommendations,
        playout_stats=vars(rx.playout.stats).copy() if rx else {},
    )
