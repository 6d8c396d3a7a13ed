"""One side of a call's media: sender + receiver + quality loop, pure.

The same object serves the call engine, the demo and the benchmarks: the caller
feeds captured frames (:meth:`MediaEndpoint.capture`), received datagrams
(:meth:`on_datagram`) and sound-card periods (:meth:`playout`), and calls
:meth:`tick` regularly. About once a second the endpoint puts a quality report
about what it receives into its next outgoing packet (a keep-alive when it is not
sending), and feeds every report the peer sends about this direction to its
controller, whose tier takes effect at the next block boundary. A device cap
(resource monitor) forbids tiers through :meth:`forbid_tiers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..crypto.media import MediaCrypto
from ..fec.backend import FecBackend, default_backend
from ..proto.f32 import repair_count
from ..proto.signal import QualityUpdate, QualityUpdateReport
from .ladder import LADDER, Tier
from .playout import FrameDecoder, PlayoutConfig
from .quality import LossPattern, QualityController, residual_loss
from .receiver import MediaReceiver, StreamReceiver
from .sender import MediaSender, TierEncoder

#: a report about every half second (SPEC: "about once a second" is the floor); while
#: only listening, each goes out on two keep-alives, since reports cross the same lossy
#: link and the peer's controller starves without them (at 60 % loss one report a
#: second left it 6 reports in 17 s)
REPORT_INTERVAL_S = 0.5
KEEPALIVE_COPIES = 2
#: residual loss (after FEC) over the last 3 s above which the receiver asks for more
#: protection with a QualityUpdate, and how often it may ask
RECOMMEND_RESIDUAL = 0.03
RECOMMEND_EVENTS = 2
RECOMMEND_WINDOW_S = 5.0
#: crossing from Opus to Codec2 trades quality for robustness: only past this residual
#: over the last RECOMMEND_CROSS_CODEC_WINDOW_S. Measured (the media benchmark, each
#: tier alone): Opus in severe keeps speech more intelligible than Codec2 in extreme
#: while it loses up to ~12 % of its frames after FEC (70 % random loss: 10.8 % lost,
#: STOI 0.894 against 0.873; 75 %: 15 % lost, 0.81 against 0.85); under bursty loss up
#: to 75 % at least. A longer window than the other requests, since a switch there and
#: back costs more than either codec.
RECOMMEND_CROSS_CODEC_RESIDUAL = 0.15
RECOMMEND_CROSS_CODEC_WINDOW_S = 10.0
#: The burst rule. The 4-byte report carries only the mean loss, and the sender's loss
#: limits assume independent loss; loss that comes in runs (a fading radio, a queue that
#: overflows) breaks a block of K + R consecutive packets far more often at the same
#: mean. The receiver sees the runs: it fits the simple Gilbert chain to the last
#: PATTERN_WINDOW_S of seqs and, when the sender's tier would lose more than
#: BURST_FAILURE_TRIGGER of its blocks under it, recommends the lightest tier of the
#: same codec family that loses at most BURST_FAILURE_TARGET (the share the loss limits
#: accept under independent loss: light's 20 % limit is 0.7 % of its blocks), or the
#: most protective one. Not before BURST_MIN_RUNS runs in BURST_MIN_PACKETS packets.
BURST_FAILURE_TARGET = 0.01
BURST_FAILURE_TRIGGER = 0.02
BURST_MIN_RUNS = 10
BURST_MIN_PACKETS = 100
#: the burst rule leaves the full-duplex tiers only when the loss is above this: up to
#: 10 % loss a call must fit 50 kbit/s a way
FULL_DUPLEX_LOSS = 0.12
#: "above" a loss limit means by this many standard errors of the window's loss (bursty
#: loss makes a 10 s window's mean noisy: at 30 % loss it reads 0.30 +- 0.04). On the
#: link model, 17 s calls at 10 % loss in runs of 3 passed 0.12 this way in 1 of 40, at
#: 20 % in about two of three (test_burst.py)
BURST_GATE_SD = 2.0
#: a tier with a longer FEC wait (ladder ``delay_loss``) needs more: a link that must keep
#: its delay under 150 ms should almost never pass (on the link model, 17 s calls at 30 %
#: loss in runs of 3 passed 0.30 this way in none of 40, at 40 % in about half, at 50 %
#: in 39 of 40 within 6 s: test_burst.py)
DELAY_GATE_SD = 3.0
#: while the runs still call for the recommended tier, the recommendation is repeated
#: this often (the sender's floor lasts a minute)
BURST_REFRESH_S = 30.0
#: how long the receiver keeps room for the longer blocks it asked for before taking the
#: request as not followed (the request crosses the lossy link on a QUIC stream)
SPAN_HINT_S = 10.0
#: no frame captured for this long counts as a pause even without stop_sending
PAUSE_S = 0.5
#: keep-alives sent at once when push-to-talk is released
PAUSE_KEEPALIVES = 3


def _above(pattern: LossPattern, limit: float, sd: float = BURST_GATE_SD) -> bool:
    """The window's loss is above ``limit`` by ``sd`` standard errors."""
    return pattern.loss - sd * pattern.loss_sd() > limit


def _enough(pattern: LossPattern) -> bool:
    """Whether the window holds enough of the link to judge its runs by."""
    return pattern.runs >= BURST_MIN_RUNS and pattern.expected >= BURST_MIN_PACKETS


def _affordable(pattern: LossPattern | None, tier: Tier) -> bool:
    """Whether the measured loss pays for ``tier``'s longer FEC wait: it has none, or the
    last PATTERN_WINDOW_S are above its ``delay_loss`` by DELAY_GATE_SD standard errors."""
    if not tier.delay_loss:
        return True
    if pattern is None or not _enough(pattern):
        return False
    return _above(pattern, tier.delay_loss, DELAY_GATE_SD)


@dataclass
class MediaEndpoint:
    encoder: TierEncoder
    decoder_factory: Callable[[], FrameDecoder]
    tx_crypto: MediaCrypto | None = None
    rx_crypto: MediaCrypto | None = None
    ladder: tuple[Tier, ...] = LADDER
    start: Tier | None = None
    stream: int = 0
    streams_allowed: frozenset[int] | None = frozenset({0})
    backend: FecBackend = field(default_factory=default_backend)
    playout_config: PlayoutConfig = field(default_factory=PlayoutConfig)
    keep_log: bool = False
    #: the receive-side bitrate cap this device asks peers to respect (kbit/s, 0 = none)
    cap_kbps: float = 0.0
    tier_kbps: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.controller = QualityController(self.ladder, self.start, tier_kbps=self.tier_kbps)
        self.sender = MediaSender(
            self.controller.tier, self.encoder, self.tx_crypto, self.stream, self.backend
        )
        self.receiver = MediaReceiver(
            self.decoder_factory,
            self.rx_crypto,
            self.backend,
            self.playout_config,
            self.streams_allowed,
            self.keep_log,
        )
        self.rtt_ms = 0.0
        self._next_report = 0.0
        self._next_recommend = 0.0
        #: the last tier the burst rule recommended, and when
        self._burst_tier: int | None = None
        self._burst_at = float("-inf")
        self.burst_recommendations = 0
        self._signals: list[QualityUpdate] = []
        self._reports_seen = 0
        self._last_capture: float | None = None
        self._next_capture: float | None = None
        self._released = False

    # -- sending -------------------------------------------------------------------------

    @property
    def frame_samples(self) -> int:
        return self.sender.frame_samples

    @property
    def tier(self) -> Tier:
        return self.sender.tier

    def capture(self, pcm48: np.ndarray, now: float) -> list[bytes]:
        """One captured frame of :attr:`frame_samples` -> datagrams to send now.

        ``now`` is when the frame's audio was captured. After a pause (push-to-talk
        released, or nothing captured for a while) media time jumps over the pause, so
        the receiver's clock sees the new spurt when it really starts, not late.
        """
        nxt = self._next_capture
        if nxt is not None and self.sender.block_empty:
            gap_ms = round((now - nxt) * 1000)
            if gap_ms > 0 and (self._released or gap_ms >= PAUSE_S * 1000):
                self.sender.skip_time(gap_ms)
        self._last_capture = now
        self._next_capture = now + self.sender.tier.frame_ms / 1000
        self._released = False
        return self.sender.push_frame(pcm48)

    def stop_sending(self) -> list[bytes]:
        """Push-to-talk released: close the open block so its repairs go out now, then
        keep-alives that tell the receiver where the spurt ended (so it plays no
        concealment after it), several copies against loss."""
        if self._released:
            return []
        self._released = True
        out = self.sender.close_block()
        return out + [self.sender.keepalive() for _ in range(PAUSE_KEEPALIVES)]

    def sending(self, now: float) -> bool:
        """Whether media packets are flowing (reports can ride on them)."""
        if self._released or self._last_capture is None:
            return False
        return now - self._last_capture <= 3 * self.sender.tier.frame_ms / 1000

    def forbid_tiers(self, names: set[str]) -> None:
        """The device cannot afford these tiers now (resource monitor)."""
        self.controller.forbid(names)
        self.sender.request_tier(self.controller.reapply_limits())

    # -- receiving -----------------------------------------------------------------------

    def on_datagram(self, data: bytes, now: float) -> None:
        self.receiver.receive(data, now)
        if self.receiver.reports_received != self._reports_seen and self.receiver.last_report:
            self._reports_seen = self.receiver.reports_received
            report = self.receiver.last_report
            tier = self.controller.on_report(report, now)
            self.sender.request_tier(tier)
            k = tier.k
            r = repair_count(k, tier.profile.fec_ratio)
            self.sender.set_loss_hint(residual_loss(report.loss_percent / 100, k, r))

    def on_quality_update(self, msg: QualityUpdate, now: float) -> None:
        """The peer's QualityUpdate (signalling): its recommended profile is a floor."""
        p = msg.recommended_profile
        # by repair count, not the header's ratio field: that one stops at 2.0 and would
        # read dense or severe as heavy
        idx = self._ladder_index(
            int(p.codec), p.frame_duration_ms, p.frames_per_block,
            repair_count(p.frames_per_block, p.fec_ratio),
        )  # fmt: skip
        if idx is not None:
            self.sender.request_tier(self.controller.on_recommendation(idx, now))

    def take_signals(self) -> list[QualityUpdate]:
        """Signalling messages to send to the peer (on a reliable stream)."""
        out, self._signals = self._signals, []
        return out

    def _ladder_index(self, codec: int, frame_ms: int, k: int, r: int) -> int | None:
        """The ladder tier of a block shape: codec id, packet duration, K and repairs."""
        for i, t in enumerate(self.ladder):
            if (int(t.codec), t.frame_ms, t.k, repair_count(t.k, t.profile.fec_ratio)) == (
                codec,
                frame_ms,
                k,
                r,
            ):
                return i
        return None

    def _burst_wanted(
        self, rx: StreamReceiver, pattern: LossPattern | None, now: float
    ) -> int | None:
        """The ladder tier the burst rule recommends to this stream's sender, or None.
        (The last recommendation is remembered per endpoint, not per stream: a direct
        call has one; in a relay room the requests go to the room as before.)"""
        shape = rx.sender_shape
        idx = None if shape is None else self._ladder_index(*shape)
        if idx is None:
            return None
        if pattern is None or not _enough(pattern):
            return None
        ladder = self.ladder
        failures: dict[int, float] = {}

        def failure(i: int) -> float:
            if i not in failures:
                t = ladder[i]
                n = t.k + repair_count(t.k, t.profile.fec_ratio)
                failures[i] = pattern.block_failure(n, t.k)
            return failures[i]

        roomy = _above(pattern, FULL_DUPLEX_LOSS)
        family = [
            i
            for i, t in enumerate(ladder)
            if t.codec.is_opus == ladder[idx].codec.is_opus
            and (roomy or t.full_duplex)
            and _affordable(pattern, t)
        ]
        if not family:
            return None
        # the lightest tier the runs allow (the most protective one if none does)
        choice = next((i for i in family if failure(i) <= BURST_FAILURE_TARGET), family[-1])
        if choice > idx and failure(idx) > BURST_FAILURE_TRIGGER:
            return choice
        if idx == self._burst_tier and choice >= idx and now - self._burst_at >= BURST_REFRESH_S:
            return idx  # the runs still call for it: keep the sender's floor
        return None

    def _recommend(self, index: int, now: float, rx: StreamReceiver) -> bool:
        report = self.receiver.report(now, self.rtt_ms, self.cap_kbps)
        if report is None:
            return False
        tier = self.ladder[index]
        # room for longer blocks in the next pause, before they arrive
        rx.playout.expect_span(tier.k * tier.frame_ms, now + SPAN_HINT_S)
        self._signals.append(
            QualityUpdate(
                QualityUpdateReport(report.loss, report.rtt_4ms, report.jitter_ms, report.cap_kbps),
                tier.profile,
            )
        )
        self._next_recommend = now + RECOMMEND_WINDOW_S
        return True

    def _maybe_recommend(self, now: float) -> None:
        """Ask the sender for more protection: at once when the loss pattern shows that
        its tier cannot hold (the burst rule), else the next heavier tier while loss
        after FEC stays high."""
        if now < self._next_recommend:
            return
        # each stream's loss pattern, fitted once for both rules
        patterns = {sid: rx.loss.pattern(now) for sid, rx in self.receiver.streams.items()}
        for sid, rx in self.receiver.streams.items():
            wanted = self._burst_wanted(rx, patterns[sid], now)
            if wanted is not None and self._recommend(wanted, now, rx):
                self._burst_tier, self._burst_at = wanted, now
                self.burst_recommendations += 1
                return
        for sid, rx in self.receiver.streams.items():
            if rx.sender_shape is None or now - rx.shape_since < RECOMMEND_WINDOW_S:
                continue  # judge a tier only on audio it alone produced
            residual, due, events = rx.playout.residual(now, RECOMMEND_WINDOW_S)
            # two separate failures, not one unlucky block: bursts, not chance
            if due < 20 or residual <= RECOMMEND_RESIDUAL or events < RECOMMEND_EVENTS:
                continue
            idx = self._ladder_index(*rx.sender_shape)
            if idx is None:
                continue
            # the next heavier tier whose delay the link pays for
            later = range(idx + 1, len(self.ladder))
            nxt = next((i for i in later if _affordable(patterns[sid], self.ladder[i])), None)
            if nxt is None:
                continue
            here, there = self.ladder[idx], self.ladder[nxt]
            if here.codec.is_opus != there.codec.is_opus:
                if now - rx.shape_since < RECOMMEND_CROSS_CODEC_WINDOW_S:
                    continue
                long_residual, _, _ = rx.playout.residual(now, RECOMMEND_CROSS_CODEC_WINDOW_S)
                if long_residual <= RECOMMEND_CROSS_CODEC_RESIDUAL:
                    continue
            if self._recommend(nxt, now, rx):
                return

    def playout(self, now: float) -> np.ndarray:
        """One sound-card period of received audio."""
        return self.receiver.pull(now)

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[bytes]:
        """Call often (every frame is fine). Schedules reports; returns keep-alives to send."""
        if now < self._next_report:
            return []
        self._next_report = now + REPORT_INTERVAL_S
        self._maybe_recommend(now)
        report = self.receiver.report(now, self.rtt_ms, self.cap_kbps)
        if not self.sending(now):
            copies = []
            for _ in range(KEEPALIVE_COPIES if report is not None else 1):
                if report is not None:
                    self.sender.attach_report(report)
                copies.append(self.sender.keepalive())
            return copies
        if report is not None:
            self.sender.attach_report(report, copies=3)
        return []
