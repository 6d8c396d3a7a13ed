"""The codec layer of the media engine (pure: no threads, sockets, files or clocks).

All PCM at this boundary is mono int16 numpy arrays at 48 kHz. Every bad input raises
:class:`CodecError` (a ``ValueError``).

* :mod:`.opus` - Opus through libopus directly (in-band FEC, PLC, loss hint).
* :mod:`.codec2` - Codec2 3200 / 1200, several frames per payload, faded concealment.
* :mod:`.resample` - 48 kHz <-> 8 kHz polyphase FIR, stateful.
* :mod:`.comfort` - comfort noise (codec id 5).
* :mod:`.tiers` - factories, the sender's :class:`CodecSwitcher`, the receiver's
  :class:`MultiDecoder`.
"""

from __future__ import annotations

from .codec2 import Codec2Decoder, Codec2Encoder
from .comfort import ComfortNoise, level_of
from .errors import CodecError
from .opus import OpusDecoder, OpusEncoder
from .resample import DELAY_48K, Downsampler, Upsampler
from .tiers import (
    CodecSwitcher,
    EncodedFrame,
    MultiDecoder,
    codec_delay_48k,
    frame_ms_choices,
    make_decoder,
    make_encoder,
)

__all__ = [
    "DELAY_48K",
    "Codec2Decoder",
    "Codec2Encoder",
    "CodecError",
    "CodecSwitcher",
    "ComfortNoise",
    "Downsampler",
    "EncodedFrame",
    "MultiDecoder",
    "OpusDecoder",
    "OpusEncoder",
    "Upsampler",
    "codec_delay_48k",
    "frame_ms_choices",
    "level_of",
    "make_decoder",
    "make_encoder",
]
