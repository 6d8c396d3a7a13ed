"""Quality profiles (SPEC 4)."""

from __future__ import annotations

from dataclasses import dataclass

from .codecs import CODEC_INFO, CodecId
from .f32 import f32


@dataclass(frozen=True, slots=True)
class Profile:
    """A quality profile: codec, FEC repair ratio, frame duration and FEC block size K.

    ``fec_ratio`` is held as the binary32 value it is on the wire.
    """

    codec: CodecId
    fec_ratio: float
    frame_duration_ms: int
    frames_per_block: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "fec_ratio", f32(self.fec_ratio))
        if not 1 <= self.frames_per_block <= 255:
            raise ValueError("frames_per_block must be 1..255")
        if not 1 <= self.frame_duration_ms <= 255:
            raise ValueError("frame_duration_ms must be 1..255")
        if not self.fec_ratio >= 0.0:
            raise ValueError("fec_ratio must be >= 0")

    @property
    def block_ms(self) -> int:
        return self.frame_duration_ms * self.frames_per_block

    def with_ratio(self, ratio: float) -> Profile:
        return Profile(self.codec, ratio, self.frame_duration_ms, self.frames_per_block)


GOOD = Profile(CodecId.Opus24k, 0.2, 20, 5)
DEGRADED = Profile(CodecId.Opus6k, 0.5, 40, 10)
CATASTROPHIC = Profile(CodecId.Codec2_1200, 1.0, 40, 8)

#: What ``CallOffer.supported_profiles`` lists, in this order (SPEC 4).
PHASE1_PROFILES: tuple[Profile, ...] = (GOOD, DEGRADED, CATASTROPHIC)


def default_frame_ms(codec: CodecId) -> int:
    return CODEC_INFO[codec].frame_ms
