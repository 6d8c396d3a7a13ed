"""The codec layer seen from the media engine: ladder tiers -> encoder settings.

A :class:`~wzp.media.ladder.Tier` names a codec id, a packet duration, and for Opus
the encoder bitrate and whether in-band FEC is on. :class:`TierCodec` applies a tier
to the codec layer's :class:`~wzp.codec.CodecSwitcher` (one Opus encoder across all
Opus tiers, switched at block boundaries by the sender).
"""

from __future__ import annotations

import numpy as np

from ..codec import CodecSwitcher, MultiDecoder, OpusEncoder
from .ladder import Tier
from .playout import FrameDecoder

#: Opus complexity 0-10. 8 is where the ladder's Opus tiers reach their quality on
#: real speech (PESQ-WB 4.25 clean at 16 kbit/s against 4.04 at 5; 4.00 against 3.76
#: for the 12 kbit/s tier at 10 % loss) for about 0.24 ms of CPU per 20 ms here; the
#: device's resource monitor lowers it where the processor cannot afford that.
DEFAULT_COMPLEXITY = 8


class TierCodec:
    """Implements :class:`wzp.media.sender.TierEncoder` on the codec layer."""

    def __init__(self, complexity: int = DEFAULT_COMPLEXITY) -> None:
        self._switcher: CodecSwitcher | None = None
        self._complexity = complexity
        self._loss_pct = 0

    @property
    def switcher(self) -> CodecSwitcher:
        if self._switcher is None:
            raise RuntimeError("configure a tier first")
        return self._switcher

    def configure(self, tier: Tier) -> None:
        if self._switcher is None:
            self._switcher = CodecSwitcher(
                tier.codec,
                tier.frame_ms,
                complexity=self._complexity,
                packet_loss_perc=self._loss_pct,
            )
        else:
            self._switcher.switch(tier.codec, tier.frame_ms)
        enc = self._switcher.encoder
        if isinstance(enc, OpusEncoder):
            if tier.opus_bitrate:
                enc.bitrate = tier.opus_bitrate
            enc.inband_fec = tier.inband_fec

    def encode(self, pcm48: np.ndarray) -> bytes:
        return self.switcher.encode(pcm48).payload

    def set_loss_hint(self, percent: int) -> None:
        self._loss_pct = percent
        if self._switcher is not None:
            self._switcher.set_packet_loss(percent)

    def set_complexity(self, value: int) -> None:
        """Opus complexity 0-10 (the resource monitor lowers it on small Pis)."""
        self._complexity = value
        if self._switcher is not None:
            self._switcher.complexity = value


def make_tier_encoder(complexity: int = DEFAULT_COMPLEXITY) -> TierCodec:
    return TierCodec(complexity)


def make_frame_decoder() -> FrameDecoder:
    return MultiDecoder()
