from __future__ import annotations

import itertools
import random

import pytest

from wzp.media.codecs import make_tier_encoder
from wzp.media.ladder import LADDER, PHASE1_TIERS, tier_for_profile, tier_named
from wzp.media.quality import (
    COPY_S,
    MIN_LOSS_PACKETS,
    MIN_LOSS_SAMPLE,
    JitterMeter,
    LossWindow,
    QualityController,
    Unwrapper,
)
from wzp.media.sender import MediaSender
from wzp.proto.f32 import repair_count
from wzp.proto.header import QualityReport
from wzp.proto.profiles import CATASTROPHIC, GOOD

TAG = 16  # the sender here is unencrypted; the AEAD tag is counted by hand
QUIC_UDP_IP = 60


def _report(loss_pct: float, rtt_ms: float = 600, cap: float = 0) -> QualityReport:
    return QualityReport.from_measured(loss_pct, rtt_ms, 5, cap)


def test_ladder_repair_counts_and_hysteresis_are_consistent() -> None:
    expected_r = {
        "clear": 1, "light": 3, "heavy": 6, "dense": 8, "severe": 9, "deep": 19, "extreme": 27,
    }  # fmt: skip
    for tier in LADDER:
        assert repair_count(tier.k, tier.profile.fec_ratio) == expected_r[tier.name]
        assert tier.k + expected_r[tier.name] <= 256  # ESIs fit the header's symbol byte
    for lighter, heavier in itertools.pairwise(LADDER):
        assert heavier.down_loss < lighter.up_loss, "hysteresis gap"
        # more repair per frame, or the same with longer blocks
        heavier_ratio = repair_count(heavier.k, heavier.profile.fec_ratio) / heavier.k
        lighter_ratio = repair_count(lighter.k, lighter.profile.fec_ratio) / lighter.k
        assert heavier_ratio > lighter_ratio or (
            heavier_ratio == lighter_ratio and heavier.k > lighter.k
        )


def test_every_tier_fits_its_link_budget(speech48) -> None:
    """Real speech through each tier's sender: wire rate with every header counted.

    Push-to-talk on a 100 kbit/s link needs <= 100 kbit/s in one direction; the two
    light tiers must leave room for a full-duplex call on it (<= 50 kbit/s).
    """
    seconds = 8
    pcm = speech48[: seconds * 48_000]
    for tier in LADDER:
        sender = MediaSender(tier, make_tier_encoder())
        wire = 0
        pos = 0
        while pos + sender.frame_samples <= len(pcm):
            for d in sender.push_frame(pcm[pos : pos + sender.frame_samples]):
                wire += len(d) + TAG + QUIC_UDP_IP
            pos += sender.frame_samples
        kbps = wire * 8 / seconds / 1000
        limit = 50 if tier.full_duplex else 100
        print(f"\n[ladder] {tier.name}: {kbps:.1f} kbit/s on the wire")
        assert kbps <= limit, (tier.name, kbps)


def test_loss_window_measures_recent_loss_only() -> None:
    w = LossWindow(window_s=3.0)
    t = 0.0
    for seq in range(0, 200):  # 10 s clean at 20 pkt/s
        w.add(seq, t)
        t += 0.05
    assert w.loss(t) == 0.0
    rng = random.Random(3)
    for seq in range(200, 400):  # then 30 % loss
        if rng.random() >= 0.3:
            w.add(seq, t)
        t += 0.05
    loss = w.loss(t)
    assert loss is not None and 0.15 < loss < 0.45  # window only, not since call start
    assert LossWindow().loss(0.0) is None


def test_loss_window_scales_a_small_sample_down() -> None:
    """Six packets with one lost are no 17 % link: under ``MIN_LOSS_SAMPLE`` packets the
    estimate is scaled down (raw for the playout, which starts its FEC wait on the first
    loss), and there is none under ``MIN_LOSS_PACKETS``."""
    w = LossWindow()
    w.add(0, 0.0)
    w.add(2, 0.1)
    assert w.loss(0.2) is None and w.loss(0.2, raw=True) is None
    for seq in (3, 4, 5):
        w.add(seq, 0.1 * seq)
    assert w.loss(0.5, raw=True) == pytest.approx(1 / 6)
    assert w.loss(0.5) == pytest.approx(1 / 6 * 6 / MIN_LOSS_SAMPLE)
    for seq in range(6, MIN_LOSS_SAMPLE):
        w.add(seq, 0.1 * seq)
    assert w.loss(2.0) == pytest.approx(1 / MIN_LOSS_SAMPLE)
    assert w.loss(2.0) == w.loss(2.0, raw=True)
    assert MIN_LOSS_PACKETS <= 6


def test_an_excused_gap_is_neither_loss_nor_a_run_and_later_loss_still_counts() -> None:
    """A push-to-talk relay dropped 10 packets of a sender who lost a collision: with the
    gap excused the window sees a clean link; the link's own losses afterwards count as
    ever, across the seq wrap and with a late packet from inside the excused gap."""
    start = 65_500  # the gap straddles the u16 wrap
    seqs = [(start + i) % 65_536 for i in range(120)]
    for excuse in (False, True):
        w = LossWindow(window_s=10.0)
        t = 0.0
        for i, seq in enumerate(seqs):
            if 40 <= i < 50:
                continue  # dropped by the relay
            w.add(seq, t, excuse_gap=excuse and i == 50)
            t += 0.05
        pattern = w.pattern(t)
        assert pattern is not None
        if excuse:
            assert w.loss(t) == 0.0 and (pattern.lost, pattern.runs) == (0, 0)
            assert pattern.expected == 110
        else:
            assert w.loss(t) == pytest.approx(10 / 120)
            assert (pattern.lost, pattern.runs) == (10, 1)
    # w is the excusing one: a late copy of a dropped seq is no new packet or loss,
    w.add(seqs[45], t)
    assert w.loss(t) == 0.0
    # a gap it is not told to excuse (the link's) counts
    for i in range(120, 140):
        if i not in (125, 126, 127):
            w.add((start + i) % 65_536, t)
        t += 0.05
    pattern = w.pattern(t)
    assert pattern is not None and (pattern.lost, pattern.runs) == (3, 1)
    assert w.loss(t) == pytest.approx(3 / 130)


def test_unwrapper_wraps() -> None:
    u = Unwrapper(16)
    seqs = (65534, 65535, 0, 1, 65535, 2)
    assert [u.extend(s) for s in seqs] == [65534, 65535, 65536, 65537, 65535, 65538]
    t = Unwrapper(32)
    got = [t.extend(x) for x in (2**32 - 20, 40, 2**32 - 10)]
    assert got == [2**32 - 20, 2**32 + 40, 2**32 - 10]


def test_jitter_meter() -> None:
    j = JitterMeter()
    for i in range(200):
        j.add(i * 0.02, 1.0 + i * 0.02 + (0.01 if i % 2 else 0.0))
    assert 0.008 < j.jitter < 0.011


class Feed:
    """Reports to a controller the way they come: a new one every half second."""

    def __init__(self, c: QualityController) -> None:
        self.c = c
        self.t = 0.0

    def __call__(self, loss_pct: float, **kw: float) -> str:
        self.t += 0.5
        return self.c.on_report(_report(loss_pct, **kw), self.t).name


def test_controller_moves_down_fast_and_up_slowly() -> None:
    c = QualityController(LADDER)
    feed = Feed(c)
    assert c.tier.name == "clear"
    feed(50)
    assert c.tier.name in ("dense", "severe")  # a collapse moves several tiers at once
    for _ in range(3):
        feed(50)
    assert c.tier.name == "severe"
    # loss falls: it takes several consecutive good reports for each step up
    steps = [feed(0) for _ in range(80)]
    assert steps[0] == "severe" and steps[-1] == "clear"
    assert steps.index("dense") >= 5


def test_copies_of_a_report_are_not_news() -> None:
    """Each report rides on up to three packets. Counted as three reports, one noisy 3 s
    window confirmed itself (two "consecutive" reports over the limit) and was smoothed in
    three times: at 50 % loss one window of 60 % sent the sender to Codec2 (with the
    ladder of then; here the same at dense's limit)."""
    c = QualityController(LADDER)
    feed = Feed(c)
    for _ in range(4):
        feed(40)
    assert c.tier.name == "dense"
    smoothed = c.state.smoothed_loss
    t = feed.t + 0.5
    assert c.on_report(_report(60), t).name == "dense"  # over the limit once
    once = c.state.smoothed_loss
    assert once > smoothed
    for dt in (0.0, COPY_S / 3):  # its copies: no confirmation, no second smoothing
        assert c.on_report(_report(60), t + dt).name == "dense"
        assert c.state.smoothed_loss == once
    # a third copy is more than a report rides on: it is a new report with the same bytes
    assert c.on_report(_report(60), t + COPY_S / 2).name == "severe"
    # the same loss again later is a new report too
    c2 = QualityController(LADDER)
    feed2 = Feed(c2)
    for loss in (40, 40, 40, 40, 60, 60):
        feed2(loss)
    assert c2.tier.name == "severe"


def test_a_tier_one_bursty_report_forced_is_undone_when_the_next_reports_disagree() -> None:
    """Bursty loss (mean burst 3) at 30 %: one early 3 s window read 62 %, which sent the
    sender to Codec2 for many seconds (each step back up takes 16 reports). Codec2 now
    takes over only past 80 %; the same with a window of 85 %."""
    c = QualityController(LADDER)
    t = 0.0
    for _ in range(4):
        t += 0.5
        c.on_report(_report(0), t)
    t += 0.5
    assert c.on_report(_report(85), t).name == "extreme"
    assert c.on_report(_report(85), t + 0.05).name == "extreme"  # a copy: no confirmation
    names = []
    for loss in (44, 41, 41):
        t += 0.5
        names.append(c.on_report(_report(loss), t).name)
    assert names == ["extreme", "extreme", "dense"]  # where the three reports' mean points


def test_a_forced_tier_that_later_reports_confirm_stays() -> None:
    c = QualityController(LADDER)
    t = 0.0
    c.on_report(_report(0), t)
    for loss in (85, 85, 80, 75, 72, 71, 71, 71):  # the first report after it confirms it
        t += 0.5
        assert c.on_report(_report(loss), t).name == "extreme"


def test_controller_does_not_flap_near_a_threshold() -> None:
    c = QualityController(LADDER)
    feed = Feed(c)
    rng = random.Random(7)
    changes = 0
    prev = c.tier
    for _ in range(300):  # loss hovering around light's up_loss (15 %)
        feed(max(0.0, rng.gauss(17.0, 4.0)))
        changes += c.tier is not prev
        prev = c.tier
    assert changes <= 6


def test_rtt_alone_never_lowers_quality() -> None:
    feed = Feed(QualityController(LADDER))
    for rtt in (300, 500, 800, 1020):
        assert feed(0.0, rtt_ms=rtt) == "clear"


def test_forbidden_tiers_and_cap() -> None:
    kbps = {"clear": 38, "light": 47, "heavy": 89, "dense": 89, "severe": 91, "extreme": 84}
    c = QualityController(LADDER, tier_kbps=kbps)
    feed = Feed(c)
    c.forbid({"clear", "light"})
    assert c.reapply_limits().name == "heavy"
    assert feed(0) == "heavy"  # can't go back up to forbidden tiers
    c.forbid(set())
    for _ in range(20):
        feed(0, cap=40)
    assert c.tier.name == "clear"  # 38 kbit/s fits the 40 kbit/s cap
    with pytest.raises(ValueError):
        c.forbid({t.name for t in LADDER})


def test_tier_lookup() -> None:
    assert tier_named("heavy").k == 2
    with pytest.raises(KeyError):
        tier_named("nope")
    assert tier_for_profile(GOOD).codec.name.startswith("Opus")
    assert tier_for_profile(CATASTROPHIC).name == "extreme"
    assert len(PHASE1_TIERS) == 3
