"""Codec2 3200 and 1200 through ``pycodec2``, with 48 kHz PCM at the boundary.

pycodec2 (4.1.1) API as used here, checked against its source: ``Codec2(mode)`` with
``mode`` the bit rate (3200 or 1200); ``samples_per_frame()`` (160 / 320 at 8 kHz, i.e.
20 / 40 ms) and ``bytes_per_frame()`` (8 / 6). ``encode(array)`` encodes only the *first*
frame of what it is given and reads the buffer as C-contiguous int16 whatever its strides;
``decode(bytes)`` needs a ``bytes`` object, decodes only its first frame but returns an array
sized for all of them (the rest uninitialised). So both are always called with exactly one
frame, a contiguous int16 array of ``samples_per_frame`` and ``bytes`` of
``bytes_per_frame``.

A payload holds one or more whole frames back to back (SPEC 1.2). The encoder takes a
packet duration that is a multiple of the mode's frame; the decoder splits any payload
whose length is a positive multiple of the frame bytes and raises ``CodecError`` otherwise.

Concealment: Codec2 decoding is parametric, so the most natural continuation of the last
good frame is to decode *its bits again*: the decoder keeps its phase and interpolation
state, so the repeated frame joins the last output without a click (a parameter repeat
through the real synthesiser). The repeated audio fades linearly from full level to
silence over three codec frames (60 ms for 3200, 120 ms for 1200), after which concealment
is silence. The first good frame after a concealment ramps from the last concealment gain
back to full level over 5 ms, so resuming does not click either.
"""

from __future__ import annotations

import numpy as np
import pycodec2

from .errors import CodecError
from .resample import DELAY_48K, FACTOR, Downsampler, Upsampler

#: Codec2 modes this project uses: bit rate -> (frame ms, frame bytes).
MODES: dict[int, tuple[int, int]] = {3200: (20, 8), 1200: (40, 6)}
#: Largest packet duration the encoder accepts, in ms.
MAX_PACKET_MS = 120
#: Concealment fades to silence over this many codec frames.
FADE_FRAMES = 3
#: Ramp back to full level after a concealment, in samples at 48 kHz (5 ms).
RESUME_RAMP = 240
#: Codec2's own analysis/synthesis delay measured on hts1a.raw, in samples at 8 kHz
#: (envelope and waveform cross-correlation peaks at 152-168); informational.
CODEC2_DELAY_8K = 160
#: Approximate total delay of encode + decode at 48 kHz (two resampler passes + codec).
TOTAL_DELAY_48K = 2 * DELAY_48K + CODEC2_DELAY_8K * FACTOR


def _check_mode(mode: int) -> tuple[int, int]:
    try:
        return MODES[mode]
    except KeyError:
        raise CodecError(f"Codec2 mode {mode} not one of {sorted(MODES)}") from None


class Codec2Encoder:
    """48 kHz int16 in, Codec2 payload (``frame_ms / mode frame`` frames) out."""

    __slots__ = ("_c2", "_down", "_frame_ms", "_spf8", "mode")

    def __init__(self, mode: int, frame_ms: int | None = None) -> None:
        codec_ms, _ = _check_mode(mode)
        self.mode = mode
        self._c2 = pycodec2.Codec2(mode)
        self._spf8 = self._c2.samples_per_frame()
        self._down = Downsampler()
        self._frame_ms = codec_ms
        self.frame_ms = codec_ms if frame_ms is None else frame_ms

    @property
    def codec_frame_ms(self) -> int:
        """Duration of one Codec2 frame of this mode (20 or 40 ms)."""
        return MODES[self.mode][0]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one Codec2 frame of this mode (8 or 6)."""
        return MODES[self.mode][1]

    @property
    def frame_ms(self) -> int:
        """Packet duration: a multiple of the codec frame, up to 120 ms."""
        return self._frame_ms

    @frame_ms.setter
    def frame_ms(self, ms: int) -> None:
        cf = self.codec_frame_ms
        if ms <= 0 or ms % cf or ms > MAX_PACKET_MS:
            raise CodecError(
                f"Codec2_{self.mode} packet must be a multiple of {cf} ms up to "
                f"{MAX_PACKET_MS}, got {ms}"
            )
        self._frame_ms = ms

    @property
    def frame_samples(self) -> int:
        """Samples (48 kHz) ``encode`` takes: ``frame_ms * 48``."""
        return self._frame_ms * 48

    def prime(self, history48: np.ndarray) -> None:
        """Start mid-stream: load recent 48 kHz input (oldest first) as encoder history.

        The resampler gets the last samples as filter history and the codec analyses the
        rest (bits discarded), so the first real frame does not start from silence.
        """
        h = np.asarray(history48, dtype=np.int16)
        self._c2 = pycodec2.Codec2(self.mode)
        self._down.reset()
        per = self._spf8 * FACTOR
        whole = (len(h) // per) * per
        for frame in self._down.process(h[len(h) - whole :]).reshape(-1, self._spf8):
            self._c2.encode(np.ascontiguousarray(frame))

    def encode(self, pcm48: np.ndarray) -> bytes:
        """Encode exactly ``frame_samples`` samples into ``frame_ms / codec_frame_ms`` frames."""
        a = np.asarray(pcm48)
        if a.ndim != 1 or a.dtype != np.int16 or len(a) != self.frame_samples:
            raise CodecError(
                f"Codec2 encoder wants {self.frame_samples} int16 samples, got {a.dtype} {a.shape}"
            )
        pcm8 = self._down.process(a)
        frames = pcm8.reshape(-1, self._spf8)
        return b"".join(self._c2.encode(np.ascontiguousarray(f)) for f in frames)


class Codec2Decoder:
    """Codec2 payload in (any whole number of frames), 48 kHz int16 out."""

    __slots__ = (
        "_c2",
        "_concealed",
        "_gain",
        "_last_bits",
        "_pending",
        "_spf48",
        "_up",
        "mode",
    )

    def __init__(self, mode: int) -> None:
        _check_mode(mode)
        self.mode = mode
        self._c2 = pycodec2.Codec2(mode)
        self._spf48 = self._c2.samples_per_frame() * FACTOR
        self._up = Upsampler()
        self._last_bits: bytes | None = None
        self._concealed = 0  # samples concealed since the last good frame
        self._gain = 1.0  # gain at the end of the last output
        self._pending = np.zeros(0, dtype=np.float64)  # concealment audio made but not given

    @property
    def frame_bytes(self) -> int:
        """Bytes of one Codec2 frame of this mode (8 or 6)."""
        return MODES[self.mode][1]

    @property
    def codec_frame_samples(self) -> int:
        """Samples at 48 kHz of one Codec2 frame (960 or 1920)."""
        return self._spf48

    def payload_samples(self, payload: bytes) -> int:
        """Samples at 48 kHz ``payload`` decodes to; ``CodecError`` if its length is wrong."""
        fb = self.frame_bytes
        if not payload or len(payload) % fb:
            raise CodecError(
                f"Codec2_{self.mode} payload of {len(payload)} bytes is not a positive "
                f"multiple of {fb}"
            )
        return len(payload) // fb * self._spf48

    def reset(self) -> None:
        """As if freshly created."""
        self._c2 = pycodec2.Codec2(self.mode)
        self._up.reset()
        self._last_bits = None
        self._concealed = 0
        self._gain = 1.0
        self._pending = np.zeros(0, dtype=np.float64)

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode every frame of ``payload``; ``len(payload) / frame_bytes * codec frame`` out."""
        self.payload_samples(payload)
        fb = self.frame_bytes
        data = bytes(payload)
        pcm8 = np.concatenate([self._c2.decode(data[i : i + fb]) for i in range(0, len(data), fb)])
        self._last_bits = data[-fb:]
        out = self._up.process(pcm8)
        if self._concealed:
            n = min(RESUME_RAMP, len(out))
            ramp = np.linspace(self._gain, 1.0, n, endpoint=False)
            out[:n] = np.rint(out[:n] * ramp).astype(np.int16)
        self._concealed = 0
        self._gain = 1.0
        self._pending = np.zeros(0, dtype=np.float64)
        return out

    def conceal(self, samples: int, next_payload: bytes | None = None) -> np.ndarray:
        """``samples`` of concealment: the last frame decoded again, fading out.

        ``next_payload`` is accepted for interface symmetry with Opus and ignored (Codec2
        has no in-band FEC).
        """
        del next_payload
        if samples < 0:
            raise CodecError(f"negative conceal length {samples}")
        fade_len = FADE_FRAMES * self._spf48
        start = self._concealed
        self._concealed += samples
        if self._last_bits is None:
            self._gain = 0.0
            return np.zeros(samples, dtype=np.int16)
        audible = max(0, min(samples, fade_len - start))
        chunks = [self._pending]
        have = len(self._pending)
        while have < audible:
            y = self._up.process(self._c2.decode(self._last_bits)).astype(np.float64)
            chunks.append(y)
            have += len(y)
        buf = np.concatenate(chunks)
        self._pending = buf[audible:]
        out = np.zeros(samples, dtype=np.float64)
        pos = np.arange(start, start + audible)
        out[:audible] = buf[:audible] * (1.0 - pos / fade_len)
        self._gain = max(0.0, 1.0 - (start + samples) / fade_len)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
