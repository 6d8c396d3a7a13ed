"""Link quality: what a receiver measures, and how a sender's controller reacts.

:class:`LossWindow` measures packet loss before FEC from the 16-bit seq of every
packet a sender emits (source and repair alike, SPEC 1.1) over a sliding window of
recent time, never since call start (ARCHITECTURE rule 8). :class:`JitterMeter` is
RFC 3550's interarrival jitter. :class:`QualityController` turns the peer's reports
into a ladder tier: loss decides, RTT never does; more protection at once when loss
rises past a tier's limit, less only after loss has stayed low for a while; tiers
the device cannot afford are forbidden from outside.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from math import comb, sqrt

from ..proto.header import QualityReport
from .ladder import LADDER, Tier


class Unwrapper:
    """A wrapping ``bits``-wide counter -> monotonic int (serial number arithmetic).

    A value more than half the range behind the newest is taken as ahead (wrapped).
    """

    __slots__ = ("_half", "_last", "_mod")

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def extend(self, value: int) -> int:
        if self._last is None:
            self._last = value
            return value
        delta = (value - self._last) % self._mod
        if delta >= self._half:
            delta -= self._mod
        ext = self._last + delta
        self._last = max(self._last, ext)
        return ext


#: packets below which the window's loss is only a hint: at call start one lost packet
#: out of six read as 17 % loss, and a first report of 33 % sent a 10 % link to the
#: 80 kbit/s tier for ten seconds. Under it the estimate is scaled down by
#: ``packets / MIN_LOSS_SAMPLE``: the first loss still brings protection at once (a
#: lossy link gets the light tier within half a second), but no collapse to the top.
MIN_LOSS_SAMPLE = 20
#: packets below which there is no estimate at all
MIN_LOSS_PACKETS = 4


#: excused gaps remembered for placing late (reordered) packets; older ones only matter
#: to a packet later than any jitter buffer keeps
MAX_EXCUSED_GAPS = 16


class LossWindow:
    """Loss before FEC over the packets of the last ``window_s`` seconds.

    Expected packets = the span of extended seqs first seen in the window; received
    = distinct seqs in it. A late packet still counts as received. No estimate (None)
    under ``MIN_LOSS_PACKETS``; under ``full_sample`` packets the estimate is scaled
    down in proportion (see :data:`MIN_LOSS_SAMPLE`).

    A gap the caller knows is not the link's (``add(..., excuse_gap=True)``: a
    push-to-talk relay dropped what the sender sent while another member held the
    floor) is closed up: the seqs after it count as if it had not been there, so it is
    neither loss nor a run of losses.
    """

    def __init__(
        self,
        window_s: float = 3.0,
        full_sample: int = MIN_LOSS_SAMPLE,
        loss_s: float | None = None,
    ) -> None:
        self.window_s = window_s
        #: :meth:`loss` covers the last ``loss_s`` of the window (default: all of it), so
        #: one window serves the report's short loss and the pattern's longer span
        self.loss_s = window_s if loss_s is None else min(loss_s, window_s)
        self.full_sample = full_sample
        self._unwrap = Unwrapper(16)
        self._events: deque[tuple[float, int]] = deque()
        self._top: int | None = None  # the highest extended seq seen
        #: (first seq after an excused gap, seqs excused below it), ascending
        self._cuts: deque[tuple[int, int]] = deque(maxlen=MAX_EXCUSED_GAPS)

    def add(self, seq: int, now: float, excuse_gap: bool = False) -> None:
        raw = self._unwrap.extend(seq)
        if excuse_gap and self._top is not None and raw > self._top + 1:
            below = self._cuts[-1][1] if self._cuts else 0
            self._cuts.append((raw, below + raw - self._top - 1))
        if self._top is None or raw > self._top:
            self._top = raw
        self._events.append((now, raw - self._excused_below(raw)))
        self._trim(now)

    def _excused_below(self, raw: int) -> int:
        i = bisect_right(self._cuts, (raw, float("inf"))) - 1
        return self._cuts[i][1] if i >= 0 else 0

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()

    def loss(self, now: float, raw: bool = False) -> float | None:
        """Fraction lost (0..1) in the window, or None with too few packets to tell.
        ``raw``: not scaled down on a small sample (the playout's FEC wait wants to know
        of the very first loss)."""
        self._trim(now)
        cutoff = now - self.loss_s
        seqs: set[int] = set()
        for t, seq in reversed(self._events):  # arrival order: the newest at the right
            if t < cutoff:
                break
            seqs.add(seq)
        if not seqs:
            return None
        expected = max(seqs) - min(seqs) + 1
        if expected < MIN_LOSS_PACKETS:
            return None
        loss = max(0.0, 1.0 - len(seqs) / expected)
        return loss if raw else loss * min(1.0, expected / self.full_sample)

    def pattern(self, now: float) -> LossPattern | None:
        """The shape of the loss in the window: packets expected, lost, and in how many
        runs (a run is a stretch of consecutive lost seqs between two received ones).
        None before two packets."""
        self._trim(now)
        seqs = sorted({s for _, s in self._events})
        if len(seqs) < 2:
            return None
        expected = seqs[-1] - seqs[0] + 1
        runs = sum(1 for a, b in pairwise(seqs) if b - a > 1)
        return LossPattern(expected, expected - len(seqs), runs)


@dataclass(frozen=True, slots=True)
class LossPattern:
    """Loss measured as a two-state Markov chain (the simple Gilbert model): its mean
    loss and its mean run of consecutive losses say how a block of consecutive packets
    fares, which the mean alone cannot. Independent loss is the special case whose mean
    run is ``1 / (1 - loss)``.
    """

    expected: int
    lost: int
    runs: int

    @property
    def loss(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @property
    def mean_burst(self) -> float:
        """Mean length of a loss run (1.0 with no runs yet)."""
        return self.lost / self.runs if self.runs else 1.0

    def chain(self) -> tuple[float, float]:
        """``(P(good -> bad), P(bad -> good))`` fitted to the window."""
        p = self.loss
        if p <= 0.0:
            return 0.0, 1.0
        if p >= 1.0:
            return 1.0, 0.0
        r = 1.0 / max(1.0, self.mean_burst)
        return min(1.0, p * r / (1.0 - p)), r

    def loss_sd(self) -> float:
        """Standard error of :attr:`loss` under the fitted chain: correlated losses make
        a window's mean far noisier than the binomial ``sqrt(p (1 - p) / n)``."""
        p = self.loss
        if self.expected == 0 or not 0.0 < p < 1.0:
            return 0.0
        q, r = self.chain()
        rho = min(0.99, max(-0.99, 1.0 - q - r))  # lag-1 correlation of the chain
        return sqrt(p * (1.0 - p) / self.expected * (1.0 + rho) / (1.0 - rho))

    def block_failure(self, n: int, k: int) -> float:
        """Probability that fewer than ``k`` of ``n`` consecutive packets arrive (a
        RaptorQ block of K sources and n - K repairs left undecodable), under the fitted
        chain started in its stationary state. Exact, by dynamic programming."""
        if k <= 0:
            return 0.0
        if n < k:
            return 1.0
        p = self.loss
        q, r = self.chain()
        # dist[bad][got]: probability of the chain's state and packets received so far
        # (got capped at k); the first packet's state is the stationary one
        good = [0.0] * (k + 1)
        bad = [0.0] * (k + 1)
        good[1] = 1.0 - p
        bad[0] = p
        for _ in range(n - 1):
            ng = [0.0] * (k + 1)
            nb = [0.0] * (k + 1)
            for got in range(k + 1):
                g, b = good[got], bad[got]
                if not (g or b):
                    continue
                up = min(k, got + 1)
                ng[up] += g * (1.0 - q) + b * r  # next packet arrives
                nb[got] += g * q + b * (1.0 - r)  # next packet is lost
            good, bad = ng, nb
        return max(0.0, min(1.0, sum(good[:k]) + sum(bad[:k])))


class JitterMeter:
    """RFC 3550 interarrival jitter (seconds) from media ts and arrival times."""

    def __init__(self) -> None:
        self.jitter = 0.0
        self._prev: float | None = None

    def add(self, media_ts_s: float, arrival: float) -> None:
        transit = arrival - media_ts_s
        if self._prev is not None:
            d = abs(transit - self._prev)
            self.jitter += (d - self.jitter) / 16.0
        self._prev = transit


#: a single report this far above the current tier's limit is a collapse, not noise
COLLAPSE_MARGIN = 0.20
#: a tier a single collapse report forced is left again when this many reports in a
#: row (the first report's window and two more) fall under its ``down_loss``: under
#: bursty loss one 3 s window can show twice the link's mean loss
UNDO_REPORTS = 3
#: each report rides on up to ``REPORT_COPIES`` packets (endpoint): the same four bytes
#: again within ``COPY_S`` of their first arrival are a copy, not news. Counting copies
#: as reports let one noisy 3 s window confirm itself (two copies = two "consecutive"
#: reports over a limit) and smoothed it two or three times over.
COPY_S = 0.3
REPORT_COPIES = 3


@dataclass
class ControllerState:
    tier: Tier
    smoothed_loss: float = 0.0
    good_reports: int = 0
    high_reports: int = 0
    reports: int = 0
    changes: int = 0
    #: the tier a single collapse report forced, until a later report confirms it
    forced: Tier | None = None
    #: losses of the reports since, all under ``forced.down_loss``
    since_forced: list[float] = field(default_factory=list)
    #: the last report taken (not a copy), when it first arrived, and copies of it since
    last: QualityReport | None = None
    last_at: float = float("-inf")
    copies: int = 0


class QualityController:
    """Picks the sending tier from the peer's quality reports.

    * Loss decides. The report's loss is smoothed asymmetrically: it rises fast
      (``alpha_up``) and falls slowly (``alpha_down``), so protection comes at once
      and goes only when the link has really improved. Moving down takes
      ``confirm_reports`` consecutive reports over the limit, except that a report
      more than ``COLLAPSE_MARGIN`` above it moves at once, as far as it calls for.
      A tier such a single report forced is only provisional: if the next
      ``UNDO_REPORTS`` reports all fall under the tier's
      ``down_loss``, the controller goes straight to the tier their mean calls for
      (bursty loss can show one 3 s window at twice the link's mean); one report at
      or over ``down_loss`` confirms it, and the usual slow climb applies.
    * Down the ladder (more protection) as soon as smoothed loss exceeds
      ``up_loss``; up again only after ``recover_reports`` consecutive reports with
      smoothed loss under the lower tier's ``down_loss``.
    * ``allowed`` (set by the device's resource monitor) forbids tiers; the
      controller then uses the nearest allowed tier on the protective side, or the
      most protective allowed one.
    * ``cap_kbps`` from the peer's report excludes tiers whose nominal wire rate is
      above it, unless no tier fits.
    * RTT is never an input.
    * A copy of the last report (``COPY_S``, ``REPORT_COPIES``) changes nothing.
    * A tier with a ``delay_loss`` (deep) is never where the loss rules go: the walk
      down passes it (its ``up_loss`` is the one of the tier before it), the climb back
      skips it. Only a recommendation's floor puts the sender there.
    * The peer may recommend more protection (``QualityUpdate.recommended_profile``,
      sent when the runs of loss it sees break this tier's blocks, or the loss it hears
      *after* FEC stays high, as under bursty loss, which the 4-byte report cannot
      show). A recommendation sets a floor for
      ``floor_hold_s``; the loss rules still move further down, never above it.
    """

    def __init__(
        self,
        ladder: tuple[Tier, ...] = LADDER,
        start: Tier | None = None,
        *,
        alpha_up: float = 0.5,
        alpha_down: float = 0.2,
        recover_reports: int = 16,
        confirm_reports: int = 2,
        tier_kbps: dict[str, float] | None = None,
        floor_hold_s: float = 60.0,
    ) -> None:
        self.ladder = ladder
        self.alpha_up = alpha_up
        self.alpha_down = alpha_down
        self.recover_reports = recover_reports
        self.confirm_reports = confirm_reports
        self.allowed: set[str] = {t.name for t in ladder}
        self.tier_kbps = tier_kbps or {}
        self.cap_kbps: float | None = None
        self.state = ControllerState(start or ladder[0])
        self.floor_hold_s = floor_hold_s
        self._floor = 0
        self._floor_until = float("-inf")
        self.recommendations = 0

    @property
    def tier(self) -> Tier:
        return self.state.tier

    def _index(self, tier: Tier) -> int:
        return self.ladder.index(tier)

    def forbid(self, names: set[str]) -> None:
        """Tiers the device cannot afford now (empty set: all allowed again)."""
        self.allowed = {t.name for t in self.ladder} - names
        if not self.allowed:
            raise ValueError("at least one tier must stay allowed")

    def _usable(self, tier: Tier) -> bool:
        if tier.name not in self.allowed:
            return False
        rate = self.tier_kbps.get(tier.name)
        return not (self.cap_kbps is not None and rate is not None and rate > self.cap_kbps)

    def _settle(self, wanted: int) -> Tier:
        """The usable tier nearest ``wanted``; on a tie, the more protective one. A tier
        with a ``delay_loss`` only when it is the one wanted."""
        # distance counted over the tiers that may be chosen here: with deep forbidden
        # or not wanted, severe's neighbours are dense and extreme
        steps = [i for i, t in enumerate(self.ladder) if i == wanted or not t.delay_loss]
        here = steps.index(wanted)
        order = sorted(range(len(steps)), key=lambda j: (abs(j - here), -j))
        for j in order:
            tier = self.ladder[steps[j]]
            if self._usable(tier):
                return tier
        allowed = [t for t in self.ladder if t.name in self.allowed]
        return allowed[-1]

    def on_recommendation(self, index: int, now: float) -> Tier:
        """The peer recommends at least ladder tier ``index``; returns the tier to use."""
        index = max(0, min(index, len(self.ladder) - 1))
        self.recommendations += 1
        if now >= self._floor_until or index > self._floor:
            self._floor = index
        self._floor_until = now + self.floor_hold_s
        st = self.state
        if self._index(st.tier) < index:
            st.good_reports = st.high_reports = 0
            new = self._settle(index)
            if new is not st.tier:
                st.tier = new
                st.changes += 1
        return st.tier

    def on_report(self, report: QualityReport, now: float = 0.0) -> Tier:
        """Feed one report from the peer; returns the tier to use from the next block."""
        st = self.state
        if report == st.last and now - st.last_at < COPY_S and st.copies < REPORT_COPIES - 1:
            st.copies += 1
            return st.tier
        st.last, st.last_at, st.copies = report, now, 0
        loss = report.loss_percent / 100.0
        if st.reports == 0:
            st.smoothed_loss = loss  # no history yet: the first report is the estimate
        else:
            alpha = self.alpha_up if loss > st.smoothed_loss else self.alpha_down
            st.smoothed_loss += alpha * (loss - st.smoothed_loss)
        st.reports += 1
        self.cap_kbps = float(report.cap_kbps) if report.cap_kbps else None
        i = self._index(st.tier)
        top = len(self.ladder) - 1
        wanted = i
        collapse = i < top and loss > self.ladder[i].up_loss + COLLAPSE_MARGIN
        if st.forced is not None and (
            st.forced is not st.tier or collapse or loss >= st.tier.down_loss
        ):
            st.forced, st.since_forced = None, []  # confirmed, or left anyway
        if collapse:
            # a collapse: straight to the tier whose range holds this report's loss
            while wanted < top and loss > self.ladder[wanted].up_loss:
                wanted += 1
            st.smoothed_loss = max(st.smoothed_loss, loss)
            st.good_reports = st.high_reports = 0
            st.forced, st.since_forced = self._settle(wanted), []
        elif st.forced is not None:
            # a tier one report forced, and every report since under its limit: after
            # UNDO_REPORTS of them, go where their mean points (never further down)
            st.since_forced.append(loss)
            if len(st.since_forced) >= UNDO_REPORTS:
                mean = sum(st.since_forced) / len(st.since_forced)
                wanted = 0
                while wanted < i and mean > self.ladder[wanted].up_loss:
                    wanted += 1
                st.smoothed_loss = mean
                st.good_reports = st.high_reports = 0
                st.forced, st.since_forced = None, []
        else:
            if i < top and st.smoothed_loss > self.ladder[i].up_loss:
                st.high_reports += 1
                if st.high_reports >= self.confirm_reports:
                    while wanted < top and st.smoothed_loss > self.ladder[wanted].up_loss:
                        wanted += 1
            else:
                st.high_reports = 0
            if wanted > i:
                st.good_reports = st.high_reports = 0
            elif i > 0 and st.smoothed_loss < st.tier.down_loss:
                st.good_reports += 1
                if st.good_reports >= self.recover_reports:
                    wanted = i - 1
                    while wanted > 0 and self.ladder[wanted].delay_loss:
                        wanted -= 1  # the loss rules never choose such a tier
                    st.good_reports = 0
            else:
                st.good_reports = 0
        if now < self._floor_until:
            wanted = max(wanted, self._floor)
        new = self._settle(wanted)
        if new is not st.tier:
            st.tier = new
            st.changes += 1
        return new

    def reapply_limits(self) -> Tier:
        """Re-check the current tier against ``allowed`` / cap (after :meth:`forbid`)."""
        new = self._settle(self._index(self.state.tier))
        if new is not self.state.tier:
            self.state.tier = new
            self.state.changes += 1
        return new


def residual_loss(loss: float, k: int, r: int) -> float:
    """Expected fraction of frames still lost after RaptorQ, for independent loss ``loss``.

    A source frame stays lost when it is lost and fewer than K of the block's other
    K + R - 1 packets arrive (RaptorQ treated as MDS; its 1/256 failure rate at exactly
    K symbols is left out). This is what the Opus decoder will actually face, so it is
    the loss hint the encoder gets: the pre-FEC loss would make SILK trade quality for
    robustness that the repair packets already provide.
    """
    loss = min(max(loss, 0.0), 1.0)
    n = k + r - 1
    ok = 1.0 - loss
    short = sum(comb(n, i) * ok**i * loss ** (n - i) for i in range(0, min(k, n + 1)))
    return loss * short
