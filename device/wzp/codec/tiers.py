"""Codec tiers: factories, the sender's switching encoder and the receiver's multi-decoder.

Sender (:class:`CodecSwitcher`). The engine asks it, at a FEC block boundary, to change
codec and/or frame duration with :meth:`CodecSwitcher.switch`; frame size, read size
(``frame_samples``), timestamp step (``ts_step_ms``) and encoder state change together
(ARCHITECTURE rule 5), and the next :meth:`~CodecSwitcher.encode` call uses them all. One
Opus encoder serves every Opus tier (only bitrate and frame size change), so an
Opus-to-Opus switch is seamless. An encoder that (re)starts mid-stream is reset and primed
with the last 40 ms of input, so its first packet does not start from silence or from
audio seconds old.

Receiver (:class:`MultiDecoder`). Picks the decoder from the codec id of every packet,
never from what was negotiated: one Opus decoder for ids 0, 1, 2, 6, 7, 8, one Codec2
decoder per mode, comfort noise for id 5. When consecutive packets need a different decoder,
the new decoder (reset, if it was used before, so no stale state plays) is cross-faded over
its first 5 ms with the old decoder's concealment continuation, so the switch has no jump.
Gaps are concealed with the decoder used last. Every returned block is exactly as long as
the audio it represents (``frame_ms * 48`` samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..proto.codecs import CODEC_INFO, MAX_KNOWN_CODEC, CodecId
from .codec2 import MODES as CODEC2_MODES
from .codec2 import TOTAL_DELAY_48K as CODEC2_DELAY_48K
from .codec2 import Codec2Decoder, Codec2Encoder
from .comfort import ComfortNoise
from .errors import CodecError
from .opus import FRAME_MS_CHOICES, MAX_FRAME_SAMPLES, OpusDecoder, OpusEncoder, packet_samples

#: Opus codec ids (all decode with one decoder; all can be encoded).
OPUS_CODECS = frozenset(
    {
        CodecId.Opus24k,
        CodecId.Opus16k,
        CodecId.Opus6k,
        CodecId.Opus32k,
        CodecId.Opus48k,
        CodecId.Opus64k,
    }
)
#: Codec2 codec ids and their pycodec2 mode.
CODEC2_CODECS: dict[CodecId, int] = {CodecId.Codec2_3200: 3200, CodecId.Codec2_1200: 1200}
#: Default Opus encoder complexity (0-10): leaves CPU headroom on a Pi.
DEFAULT_COMPLEXITY = 5
#: Cross-fade at a decoder change, in samples at 48 kHz (5 ms, a multiple of Opus's 2.5 ms).
CROSSFADE = 240
#: Input history kept to prime an encoder that starts mid-stream (40 ms at 48 kHz).
PRIME_SAMPLES = 1920
#: Opus end-to-end delay (encoder lookahead, VOIP) in samples at 48 kHz.
OPUS_DELAY_48K = 312

Encoder = OpusEncoder | Codec2Encoder
Decoder = OpusDecoder | Codec2Decoder | ComfortNoise


def codec_delay_48k(codec: CodecId) -> int:
    """Encode + decode delay of a tier in samples at 48 kHz (align audio by it)."""
    c = _codec(codec)
    if c in OPUS_CODECS:
        return OPUS_DELAY_48K
    if c in CODEC2_CODECS:
        return CODEC2_DELAY_48K
    return 0


def _codec(codec: int) -> CodecId:
    if isinstance(codec, bool) or not isinstance(codec, int) or not 0 <= codec <= MAX_KNOWN_CODEC:
        raise CodecError(f"unknown codec id {codec!r}")
    return CodecId(codec)


def frame_ms_choices(codec: CodecId) -> tuple[int, ...]:
    """Packet durations (ms) the encoder of ``codec`` accepts."""
    c = _codec(codec)
    if c in OPUS_CODECS:
        return tuple(ms for ms in FRAME_MS_CHOICES if ms >= 20)
    if c in CODEC2_CODECS:
        step = CODEC2_MODES[CODEC2_CODECS[c]][0]
        return tuple(range(step, 121, step))
    raise CodecError(f"{c.name} has no encoder")


def _check_frame_ms(codec: CodecId, frame_ms: int | None) -> int:
    ms = CODEC_INFO[codec].frame_ms if frame_ms is None else frame_ms
    if ms not in frame_ms_choices(codec):
        raise CodecError(f"{codec.name} cannot use {ms} ms frames: {frame_ms_choices(codec)}")
    return ms


def make_encoder(
    codec: CodecId,
    frame_ms: int | None = None,
    *,
    complexity: int = DEFAULT_COMPLEXITY,
    packet_loss_perc: int = 0,
) -> Encoder:
    """A fresh encoder for ``codec`` (frame default from SPEC 1.2); ComfortNoise has none."""
    c = _codec(codec)
    ms = _check_frame_ms(c, frame_ms)
    if c in OPUS_CODECS:
        return OpusEncoder(
            CODEC_INFO[c].bitrate, ms, complexity=complexity, packet_loss_perc=packet_loss_perc
        )
    return Codec2Encoder(CODEC2_CODECS[c], ms)


def make_decoder(codec: CodecId) -> Decoder:
    """A fresh decoder for ``codec`` (an ``OpusDecoder`` decodes every Opus id)."""
    c = _codec(codec)
    if c in OPUS_CODECS:
        return OpusDecoder()
    if c in CODEC2_CODECS:
        return Codec2Decoder(CODEC2_CODECS[c])
    return ComfortNoise()


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One source payload and what the header needs to describe it."""

    codec: CodecId
    payload: bytes
    #: media time the payload covers, i.e. the timestamp step to the next frame
    frame_ms: int


class CodecSwitcher:
    """The sender's encoder front end: one current tier, switched at block boundaries."""

    __slots__ = (
        "_c2",
        "_codec",
        "_complexity",
        "_frame_ms",
        "_history",
        "_loss",
        "_opus",
        "_opus_fresh",
    )

    def __init__(
        self,
        codec: CodecId,
        frame_ms: int | None = None,
        *,
        complexity: int = DEFAULT_COMPLEXITY,
        packet_loss_perc: int = 0,
    ) -> None:
        self._opus: OpusEncoder | None = None
        self._opus_fresh = True
        self._c2: dict[int, Codec2Encoder] = {}
        self._complexity = complexity
        self._loss = packet_loss_perc
        self._history = np.zeros(0, dtype=np.int16)
        c = _codec(codec)
        if c not in OPUS_CODECS and c not in CODEC2_CODECS:
            raise CodecError(f"{c.name} has no encoder")
        self._codec = c
        self._frame_ms = _check_frame_ms(c, frame_ms)
        self._configure(None)

    # -- what the sender reads --------------------------------------------------------
    @property
    def codec(self) -> CodecId:
        """Codec id of the packets ``encode`` produces now."""
        return self._codec

    @property
    def frame_ms(self) -> int:
        """Duration of one packet now, in ms."""
        return self._frame_ms

    @property
    def ts_step_ms(self) -> int:
        """Media-timestamp step between consecutive packets (= ``frame_ms``)."""
        return self._frame_ms

    @property
    def frame_samples(self) -> int:
        """How many 48 kHz samples to read for the next ``encode``: ``frame_ms * 48``."""
        return self._frame_ms * 48

    @property
    def encoder(self) -> Encoder:
        """The encoder ``encode`` uses now (for inspection; don't reconfigure it directly)."""
        if self._codec in OPUS_CODECS:
            assert self._opus is not None
            return self._opus
        return self._c2[CODEC2_CODECS[self._codec]]

    # -- settings ---------------------------------------------------------------------
    @property
    def complexity(self) -> int:
        """Opus encoder complexity 0-10."""
        return self._complexity

    @complexity.setter
    def complexity(self, value: int) -> None:
        if self._opus is not None:
            self._opus.complexity = value
        elif not 0 <= value <= 10:
            raise CodecError(f"Opus complexity {value} outside 0..10")
        self._complexity = value

    def set_packet_loss(self, percent: float) -> None:
        """Measured packet loss (0-100 %) as Opus's FEC hint; kept for later Opus tiers."""
        p = round(min(100.0, max(0.0, float(percent))))
        self._loss = p
        if self._opus is not None:
            self._opus.packet_loss_perc = p

    # -- switching --------------------------------------------------------------------
    def switch(self, codec: CodecId, frame_ms: int | None = None) -> bool:
        """Change tier for the next ``encode`` (call at a block boundary).

        ``frame_ms`` defaults to the codec's SPEC frame. Returns whether anything changed.
        Raises ``CodecError`` (and changes nothing) for a codec without encoder or a frame
        duration the codec cannot use.
        """
        c = _codec(codec)
        if c not in OPUS_CODECS and c not in CODEC2_CODECS:
            raise CodecError(f"{c.name} has no encoder")
        ms = _check_frame_ms(c, frame_ms)
        if c == self._codec and ms == self._frame_ms:
            return False
        previous = self._codec
        self._codec, self._frame_ms = c, ms
        self._configure(previous)
        return True

    def _configure(self, previous: CodecId | None) -> None:
        c = self._codec
        if c in OPUS_CODECS:
            if self._opus is None:
                self._opus = OpusEncoder(
                    CODEC_INFO[c].bitrate,
                    self._frame_ms,
                    complexity=self._complexity,
                    packet_loss_perc=self._loss,
                )
            else:
                self._opus.bitrate = CODEC_INFO[c].bitrate
                self._opus.frame_ms = self._frame_ms
                self._opus.packet_loss_perc = self._loss
            if previous is not None and previous not in OPUS_CODECS:
                # Back to Opus after Codec2: forget stale audio, analyse the recent input.
                self._opus.reset()
                self._prime_opus()
            return
        mode = CODEC2_CODECS[c]
        enc = self._c2.get(mode)
        if enc is None:
            enc = self._c2[mode] = Codec2Encoder(mode, self._frame_ms)
        else:
            enc.frame_ms = self._frame_ms
        if previous is not None and previous != c:
            enc.prime(self._history)

    def _prime_opus(self) -> None:
        assert self._opus is not None
        h = self._history
        if len(h) < 960:
            return
        keep = self._opus.frame_ms
        self._opus.frame_ms = 20
        for i in range(len(h) % 960, len(h), 960):
            self._opus.encode(h[i : i + 960])
        self._opus.frame_ms = keep

    # -- work ---------------------------------------------------------------------------
    def encode(self, pcm: np.ndarray) -> EncodedFrame:
        """Encode one frame of exactly ``frame_samples`` int16 samples at 48 kHz."""
        a = np.asarray(pcm)
        if a.ndim != 1 or a.dtype != np.int16 or len(a) != self.frame_samples:
            raise CodecError(
                f"{self._codec.name}/{self._frame_ms} ms wants {self.frame_samples} int16 "
                f"samples, got {a.dtype} {a.shape}"
            )
        payload = self.encoder.encode(a)
        if len(a) >= PRIME_SAMPLES:
            self._history = a[len(a) - PRIME_SAMPLES :].copy()
        else:
            self._history = np.concatenate((self._history, a))[-PRIME_SAMPLES:]
        return EncodedFrame(self._codec, payload, self._frame_ms)

    def close(self) -> None:
        """Free the Opus encoder."""
        if self._opus is not None:
            self._opus.close()


def _family(codec: CodecId) -> int:
    """Which decoder object handles ``codec``: -1 Opus, 5 comfort noise, else the mode."""
    if codec in OPUS_CODECS:
        return -1
    if codec in CODEC2_CODECS:
        return CODEC2_CODECS[codec]
    return int(CodecId.ComfortNoise)


_FADE_IN = np.sin(np.linspace(0.0, np.pi / 2, CROSSFADE, endpoint=False)) ** 2


class MultiDecoder:
    """The receiver's decoder front end for one sender stream."""

    __slots__ = ("_decoders", "_last", "_used")

    def __init__(self) -> None:
        self._decoders: dict[int, Decoder] = {
            -1: OpusDecoder(),
            3200: Codec2Decoder(3200),
            1200: Codec2Decoder(1200),
            int(CodecId.ComfortNoise): ComfortNoise(),
        }
        self._last: CodecId | None = None
        self._used: set[int] = set()

    @property
    def last_codec(self) -> CodecId | None:
        """Codec id of the last packet decoded (``None`` before the first)."""
        return self._last

    @staticmethod
    def payload_samples(codec: int, payload: bytes, cn_samples: int = 960) -> int:
        """Samples at 48 kHz that ``payload`` of ``codec`` decodes to, without decoding it.

        ``CodecError`` for an unknown id or a payload that cannot decode.
        """
        c = _codec(codec)
        if c in OPUS_CODECS:
            return packet_samples(payload)
        if c in CODEC2_CODECS:
            mode = CODEC2_CODECS[c]
            cf_ms, fb = CODEC2_MODES[mode]
            if not payload or len(payload) % fb:
                raise CodecError(
                    f"{c.name} payload of {len(payload)} bytes is not a positive multiple of {fb}"
                )
            return len(payload) // fb * cf_ms * 48
        if not payload:
            raise CodecError("empty comfort-noise payload")
        return cn_samples

    def decode(self, codec: int, payload: bytes, cn_samples: int = 960) -> np.ndarray:
        """Decode one source payload with the decoder its codec id names.

        ``cn_samples`` is the duration of a ComfortNoise packet (which does not say).
        Raises ``CodecError`` for codec ids outside 0..8, empty payloads and payloads the
        decoder rejects; the caller counts it and conceals the frame instead.
        """
        c = _codec(codec)
        fam = _family(c)
        dec = self._decoders[fam]
        prev_fam = None if self._last is None else _family(self._last)
        switching = prev_fam is not None and prev_fam != fam
        if not payload:
            raise CodecError(f"empty {c.name} payload")
        if switching and fam in self._used:
            # Validate first: a bad packet must not reset the decoder.
            self.payload_samples(c, payload, cn_samples)
            dec.reset()
        if isinstance(dec, ComfortNoise):
            out = dec.decode(payload, cn_samples)
        else:
            out = dec.decode(payload)
        if switching:
            assert prev_fam is not None
            n = min(CROSSFADE, len(out)) // 120 * 120
            if n:
                tail = self._decoders[prev_fam].conceal(n).astype(np.float64)
                w = _FADE_IN[:n] if n == CROSSFADE else np.sin(np.linspace(0, np.pi / 2, n)) ** 2
                mixed = tail * (1.0 - w) + out[:n].astype(np.float64) * w
                out[:n] = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
        self._used.add(fam)
        self._last = c
        return out

    def conceal(
        self, samples: int, next_codec: int | None = None, next_payload: bytes | None = None
    ) -> np.ndarray:
        """``samples`` of audio for a gap, from the decoder used last (silence before any).

        When the packet after the gap is at hand (``next_codec``, ``next_payload``) and both
        it and the last packet are Opus, the end of the gap comes from its in-band FEC
        (measured with libopus 1.3.1: usable FEC at Opus24k and up once the loss hint is
        about 10 % or more; at Opus16k only with complexity 10 and a hint of 25 % or more;
        never at Opus6k, whose bitrate is below libopus's FEC threshold). Opus conceals in
        2.5 ms steps: a length that is not a multiple of 120 samples is rounded up inside
        libopus and the output cut to length.
        """
        if samples < 0:
            raise CodecError(f"negative conceal length {samples}")
        if self._last is None or samples == 0:
            return np.zeros(samples, dtype=np.int16)
        fam = _family(self._last)
        dec = self._decoders[fam]
        if not isinstance(dec, OpusDecoder):
            return dec.conceal(samples)
        fec = None
        if next_codec is not None and next_payload and next_codec in OPUS_CODECS:
            fec = next_payload
        # libopus conceals in 2.5 ms steps, at most 120 ms per call.
        total = -(-samples // 120) * 120
        parts = []
        while total > 0:
            n = min(total, MAX_FRAME_SAMPLES)
            total -= n
            parts.append(dec.conceal(n, fec if total == 0 else None))
        return np.concatenate(parts)[:samples]

    def close(self) -> None:
        """Free the Opus decoder."""
        dec = self._decoders[-1]
        assert isinstance(dec, OpusDecoder)
        dec.close()
