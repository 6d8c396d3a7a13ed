"""The quality benchmark's block-failure table: RaptorQ's failures on the link model alone."""

from __future__ import annotations

from math import comb

import pytest

from wzp.bench.quality import block_failures
from wzp.media.ladder import LADDER
from wzp.proto.f32 import repair_count

TABLE = block_failures(LADDER, (("random", 1.0), ("bursty", 3.0)), (10, 20, 30, 40), seed=3)


def _binomial_failure(n: int, k: int, loss: float) -> float:
    """P(fewer than k of n packets arrive) with independent loss."""
    ok = 1 - loss
    return sum(comb(n, r) * ok**r * loss ** (n - r) for r in range(k))


@pytest.mark.parametrize("loss", [20, 30, 40])
def test_random_loss_fails_blocks_as_the_binomial_says(loss: int) -> None:
    for tier in LADDER:
        n = tier.k + repair_count(tier.k, tier.profile.fec_ratio)
        expected = _binomial_failure(n, tier.k, loss / 100)
        measured = TABLE["random"][str(loss)][tier.name]
        # 40 000 packets: a few standard errors of a rate near p over ~40 000 windows
        assert measured == pytest.approx(expected, abs=max(0.002, 4 * (expected / 4000) ** 0.5))


def test_bursts_fail_the_protected_block_sizes_more_often_than_random_loss() -> None:
    # the Opus tiers with at least as many repairs as sources (clear's K 3 + R 1 is the
    # exception: with one repair, losses bunched into bursts spare more blocks than they
    # break; Codec2's 4 + 27 blocks almost never fail either way)
    protected = [
        t for t in LADDER if t.codec.is_opus and repair_count(t.k, t.profile.fec_ratio) >= t.k
    ]
    assert [t.name for t in protected] == ["light", "heavy", "dense", "severe"]
    for loss in ("10", "20", "30", "40"):
        for tier in protected:
            assert TABLE["bursty"][loss][tier.name] > TABLE["random"][loss][tier.name]
    # heavy at 20 %: random loss breaks almost no block, 3-packet bursts break several in 100
    assert TABLE["random"]["20"]["heavy"] < 0.002 < 0.01 < TABLE["bursty"]["20"]["heavy"]
