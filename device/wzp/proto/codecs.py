"""Codec ids of the media header (SPEC 1.2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CodecId(IntEnum):
    """Codec id carried in header byte 0, bits 5..2. Its name is also its JSON string."""

    Opus24k = 0
    Opus16k = 1
    Opus6k = 2
    Codec2_3200 = 3
    Codec2_1200 = 4
    ComfortNoise = 5
    Opus32k = 6
    Opus48k = 7
    Opus64k = 8

    @property
    def is_opus(self) -> bool:
        return CODEC_INFO[self].is_opus


#: Ids a receiver accepts (SPEC 1.2 [change]); 9..15 are dropped and counted.
MAX_KNOWN_CODEC = 8


@dataclass(frozen=True, slots=True)
class CodecInfo:
    bitrate: int
    frame_ms: int
    sample_rate: int
    #: fixed encoded frame size in bytes, ``None`` for variable (Opus)
    frame_bytes: int | None

    @property
    def is_opus(self) -> bool:
        return self.sample_rate == 48_000 and self.frame_bytes is None


CODEC_INFO: dict[CodecId, CodecInfo] = {
    CodecId.Opus24k: CodecInfo(24_000, 20, 48_000, None),
    CodecId.Opus16k: CodecInfo(16_000, 20, 48_000, None),
    CodecId.Opus6k: CodecInfo(6_000, 40, 48_000, None),
    CodecId.Codec2_3200: CodecInfo(3_200, 20, 8_000, 8),
    CodecId.Codec2_1200: CodecInfo(1_200, 40, 8_000, 6),
    CodecId.ComfortNoise: CodecInfo(0, 20, 48_000, 1),
    CodecId.Opus32k: CodecInfo(32_000, 20, 48_000, None),
    CodecId.Opus48k: CodecInfo(48_000, 20, 48_000, None),
    CodecId.Opus64k: CodecInfo(64_000, 20, 48_000, None),
}


def codec_from_name(name: str) -> CodecId:
    """The codec whose JSON name is ``name``; ``ValueError`` if there is none."""
    try:
        return CodecId[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}") from None
