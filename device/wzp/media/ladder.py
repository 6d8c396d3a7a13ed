"""The protection ladder: which tier the sender uses at which measured loss.

wzp phase 1 has three profiles (SPEC 4). Measured on real speech (the media
benchmark), they do not fit the link we serve: GOOD (Opus24k in 20 ms packets)
costs ~71 kbit/s on the wire once the 12-byte header, 16-byte tag and 60 bytes of
QUIC/UDP/IP are counted, so a 100 kbit/s link cannot carry a full-duplex call, and
its 0.2 repair ratio cannot hold 30 % loss. The packet overhead, not the codec, is
what costs: Opus at 12 kbit/s scores PESQ-WB 4.03 in 60 ms packets and the same in
120 ms ones (10 kbit/s: 3.50), but a 120 ms packet pays the 88 bytes once where two
60 ms ones pay them twice. So the ladder sends 120 ms packets as soon as there is
loss and spends what that saves on RaptorQ repair: more repair symbols in the same
kbit/s, and blocks of only K = 2, so the FEC wait stays at 120 ms. The clean tier
keeps 60 ms packets (less latency when nothing needs repair).

Every lossy Opus tier is a block of K = 2 packets plus R repairs: a block is lost
only when fewer than 2 of its 2 + R packets arrive. Under random loss that happens to
1 block in 100 at 22 % for light (R 3), 41 % for heavy (R 6), 50 % for dense (R 8)
and 53 % for severe (R 9, at 11 kbit/s to fit 100 kbit/s) (binomial; the quality
benchmark's ``block_failures`` measures it on the link model). Each tier's
``up_loss`` sits near that point: light 20 %, heavy 35 % (0.4 % of blocks: dense
costs only rate there), dense 48 %. Severe holds to 80 %: measured tier by tier
(``bench/results/pinned-high.json``), Opus in severe keeps speech more intelligible
than Codec2 3200 (27 repairs per 4 packets) up to about 70 % loss even with a tenth
of its frames lost, so Codec2 is the last resort only. ``down_loss`` is where the
lighter tier is safe again (hysteresis).
Under bursty loss (Gilbert, mean burst 3 packets) the same block sizes lose more:
one burst can take most of a 5-10 packet block. The receiver sees the runs and asks
for the tier they call for (endpoint.py); above 30 % loss, where the delay budget is
400 ms, that can be deep: blocks of K = 4 with 19 repairs, whose first packet waits
360 ms for them, and which lose 0.6 % of blocks at 50 % loss in runs of 3 where
severe loses 3.7 %.

Each tier is a :class:`~wzp.proto.profiles.Profile` (codec id, repair ratio, packet
duration, K) plus what the profile does not carry: the Opus bitrate (the codec id's
nominal bitrate is informational; every Opus id decodes alike), the number of
Codec2 frames per packet follows from the packet duration. The controller moves
down the ladder (more protection) as loss rises. Every tier fits a 100 kbit/s link
in push-to-talk use with all headers counted; the first two fit 50 kbit/s.
(Opus in-band FEC stays on with the loss hint, but libopus 1.3.1 puts no LBRR into
60 or 120 ms packets at 12-16 kbit/s: measured, a lost packet decoded from the next
one's FEC equals PLC. RaptorQ is what protects these tiers.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..proto.codecs import CodecId
from ..proto.profiles import CATASTROPHIC, DEGRADED, GOOD, Profile


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    profile: Profile
    #: encoder bitrate for Opus tiers (bit/s); None for Codec2
    opus_bitrate: int | None
    #: leave for the next (more protective) tier above this smoothed loss (0..1)
    up_loss: float
    #: leave this tier for the previous (lighter) one once smoothed loss stays below this
    down_loss: float
    #: Opus in-band FEC (LBRR) on; the loss hint then follows the measured loss
    inband_fec: bool = True
    #: fits half of a 100 kbit/s link with every header counted, so a full-duplex call
    #: goes through (the loss rules alone keep to these tiers at up to 20 % loss)
    full_duplex: bool = False
    #: > 0: longer blocks whose FEC wait only a link lossier than this may pay for (the
    #: delay budget is 150 ms up to 30 % loss, 400 ms beyond). The loss rules never
    #: choose such a tier: the mean loss of a 3 s window cannot tell 30 % from 40 %
    #: under bursts. Only the receiver asks for it (endpoint.py), once the loss it has
    #: measured over 10 s is clearly above this.
    delay_loss: float = 0.0

    @property
    def codec(self) -> CodecId:
        return self.profile.codec

    @property
    def frame_ms(self) -> int:
        return self.profile.frame_duration_ms

    @property
    def k(self) -> int:
        return self.profile.frames_per_block


def _p(codec: CodecId, ratio: float, frame_ms: int, k: int) -> Profile:
    return Profile(codec, ratio, frame_ms, k)


#: The default ladder, least to most protective. Ratios are R/K with R the repair
#: count per block: ceil(K * ratio) in f32 must give that R (checked in the tests).
LADDER: tuple[Tier, ...] = (
    Tier(
        "clear",
        _p(CodecId.Opus16k, 0.33, 60, 3),
        16_000,
        up_loss=0.02,
        down_loss=0.0,
        full_duplex=True,
    ),
    Tier(
        "light",
        _p(CodecId.Opus16k, 1.5, 120, 2),
        12_000,
        up_loss=0.20,
        down_loss=0.008,
        full_duplex=True,
    ),
    Tier("heavy", _p(CodecId.Opus16k, 3.0, 120, 2), 12_000, up_loss=0.35, down_loss=0.12),
    Tier("dense", _p(CodecId.Opus16k, 4.0, 120, 2), 12_000, up_loss=0.48, down_loss=0.26),
    Tier("severe", _p(CodecId.Opus16k, 4.5, 120, 2), 11_000, up_loss=0.80, down_loss=0.38),
    Tier(
        "deep",
        _p(CodecId.Opus16k, 4.75, 120, 4),
        11_000,
        up_loss=0.80,
        down_loss=0.38,
        delay_loss=0.30,
    ),
    Tier("extreme", _p(CodecId.Codec2_3200, 6.75, 100, 4), None, up_loss=1.01, down_loss=0.70),
)

#: wzp phase 1's profiles as tiers, for interoperability and the baselines.
PHASE1_TIERS: tuple[Tier, ...] = (
    Tier("GOOD", GOOD, 24_000, up_loss=0.10, down_loss=0.0),
    Tier("DEGRADED", DEGRADED, 6_000, up_loss=0.40, down_loss=0.05),
    Tier("CATASTROPHIC", CATASTROPHIC, None, up_loss=1.01, down_loss=0.25),
)


def tier_named(name: str, ladder: tuple[Tier, ...] = LADDER) -> Tier:
    for tier in ladder:
        if tier.name == name:
            return tier
    raise KeyError(f"no tier {name!r} (known: {', '.join(t.name for t in ladder)})")


def tier_for_profile(profile: Profile, ladder: tuple[Tier, ...] = LADDER) -> Tier:
    """The ladder tier closest to a negotiated profile (same codec, then same K)."""
    same_codec = [t for t in ladder if t.codec is profile.codec]
    if not same_codec:
        by_family = {
            CodecId.Codec2_1200: CodecId.Codec2_3200,
            CodecId.Opus6k: CodecId.Opus16k,
            CodecId.Opus24k: CodecId.Opus16k,
        }
        family = by_family.get(profile.codec, CodecId.Opus16k)
        same_codec = [t for t in ladder if t.codec is family] or list(ladder)
    return min(same_codec, key=lambda t: abs(t.profile.fec_ratio - profile.fec_ratio))
