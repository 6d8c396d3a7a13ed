"""The receiver's request for more protection reaches the tier it names.

The header's 7-bit ratio field stops at 2.0 (SPEC 1.1); heavy (R 6 of K 2), dense (R 8)
and severe (R 9) all exceed it, have the same codec id, packet duration and K, and so
look the same in it. The receiver tells them apart by the repairs it sees, and the
sender by the recommended profile's own ratio.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.media.test_engine import run
from wzp.media.codecs import make_frame_decoder, make_tier_encoder
from wzp.media.endpoint import MediaEndpoint
from wzp.media.ladder import LADDER, tier_named
from wzp.proto.f32 import encode_ratio, repair_count
from wzp.proto.header import MediaHeader
from wzp.proto.signal import QualityUpdate, QualityUpdateReport

SATURATED = ("heavy", "dense", "severe")


def test_the_saturated_tiers_share_everything_but_their_repair_count() -> None:
    tiers = [tier_named(n) for n in SATURATED]
    shapes = {(t.codec, t.frame_ms, t.k, encode_ratio(t.profile.fec_ratio)) for t in tiers}
    assert len(shapes) == 1  # what the header says is the same for all three
    assert len({repair_count(t.k, t.profile.fec_ratio) for t in tiers}) == 3


@pytest.mark.parametrize("name", SATURATED)
def test_the_receiver_sees_which_tier_is_sent(speech48: np.ndarray, name: str) -> None:
    tier = tier_named(name)
    r = repair_count(tier.k, tier.profile.fec_ratio)

    def drop(h: MediaHeader) -> bool:
        # the last repair of every other block is lost: the count still comes through
        return h.is_repair and h.symbol == tier.k + r - 1 and h.block % 2 == 1

    _, rx, _ = run(speech48[: 48 * 2400], [(0.0, tier)], drop)
    shape = rx.streams[0].sender_shape
    assert shape == (int(tier.codec), tier.frame_ms, tier.k, r)


@pytest.mark.parametrize("name", [*SATURATED, "extreme"])
def test_a_recommendation_sets_the_floor_it_names(name: str) -> None:
    ep = MediaEndpoint(make_tier_encoder(), make_frame_decoder, ladder=LADDER)
    assert ep.controller.tier.name == "clear"
    tier = tier_named(name)
    ep.on_quality_update(QualityUpdate(QualityUpdateReport(40, 75, 5, 0), tier.profile), 1.0)
    assert ep.controller.tier is tier
