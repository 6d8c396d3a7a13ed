"""Opus at 48 kHz mono, through libopus directly (ctypes), on the library opuslib loads.

opuslib (3.0.1) is used only to find and load libopus: its ``opuslib.api.libopus`` is the
``ctypes.CDLL``. Its Python classes are not used, because of three defects (each checked
against opuslib 3.0.1 / libopus 1.3.1 before working around it):

* ``Encoder.inband_fec = 1`` raises ``TypeError`` (the setter never passes the value);
* there is no ``dtx`` property, so ``Encoder.dtx = 0`` silently sets a plain attribute;
* ``Decoder.decode`` allocates a ctypes buffer and copies through ``array`` every call,
  ~2.5x slower than ``opus_decode`` into a preallocated buffer.

So this module binds ``opus_encoder_ctl`` / ``opus_decoder_ctl`` itself, with fixed
argtypes per call shape (SET: ``opus_int32`` value, GET: ``opus_int32 *``; the CTLs are
variadic in C, and on the Linux ABIs we run on, x86-64 and AArch64, a variadic int or
pointer is passed like a fixed one). Function objects are taken with ``lib["name"]``, which
returns a fresh object, so the argtypes set here never change the ones opuslib set on its
own cached attributes.
"""

from __future__ import annotations

import ctypes

import numpy as np
import opuslib.api

from .errors import CodecError

RATE = 48_000
CHANNELS = 1
#: Largest Opus packet duration (120 ms) in samples at 48 kHz.
MAX_FRAME_SAMPLES = 5760
#: Largest packet we ask the encoder for (3 x 1275 B frames of a 60 ms packet, rounded up;
#: 120 ms packets at the bitrates wzp uses stay far below it).
MAX_PACKET_BYTES = 4000
#: Frame durations the encoder accepts, in ms. 80-120 ms packets (libopus >= 1.2: Bookworm
#: ships 1.3.1, Trixie 1.5) are 60 ms frames repacketised: the same quality per bit, half
#: the packets, so half the 88 bytes of header, tag and QUIC/UDP/IP per second.
FRAME_MS_CHOICES = (10, 20, 40, 60, 80, 100, 120)

# opus_defines.h
OPUS_OK = 0
OPUS_APPLICATION_VOIP = 2048
OPUS_SIGNAL_VOICE = 3001
OPUS_SET_BITRATE_REQUEST = 4002
OPUS_GET_BITRATE_REQUEST = 4003
OPUS_SET_COMPLEXITY_REQUEST = 4010
OPUS_GET_COMPLEXITY_REQUEST = 4011
OPUS_SET_INBAND_FEC_REQUEST = 4012
OPUS_GET_INBAND_FEC_REQUEST = 4013
OPUS_SET_PACKET_LOSS_PERC_REQUEST = 4014
OPUS_GET_PACKET_LOSS_PERC_REQUEST = 4015
OPUS_SET_DTX_REQUEST = 4016
OPUS_GET_DTX_REQUEST = 4017
OPUS_SET_SIGNAL_REQUEST = 4024
OPUS_GET_LOOKAHEAD_REQUEST = 4027
OPUS_RESET_STATE = 4028

_lib = opuslib.api.libopus


def _fn(name: str, restype: object, argtypes: tuple[object, ...]) -> ctypes._CFuncPtr:
    f = _lib[name]  # a fresh function object, not opuslib's cached one
    f.restype = restype
    f.argtypes = argtypes
    return f


_P = ctypes.c_void_p
_I32P = ctypes.POINTER(ctypes.c_int32)
_enc_create = _fn(
    "opus_encoder_create",
    _P,
    (ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)),
)
_enc_destroy = _fn("opus_encoder_destroy", None, (_P,))
_enc_ctl_set = _fn("opus_encoder_ctl", ctypes.c_int, (_P, ctypes.c_int, ctypes.c_int32))
_enc_ctl_get = _fn("opus_encoder_ctl", ctypes.c_int, (_P, ctypes.c_int, _I32P))
_enc_ctl_req = _fn("opus_encoder_ctl", ctypes.c_int, (_P, ctypes.c_int))
_encode = _fn("opus_encode", ctypes.c_int32, (_P, _P, ctypes.c_int, _P, ctypes.c_int32))
_dec_create = _fn(
    "opus_decoder_create", _P, (ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
)
_dec_destroy = _fn("opus_decoder_destroy", None, (_P,))
_dec_ctl_req = _fn("opus_decoder_ctl", ctypes.c_int, (_P, ctypes.c_int))
_decode = _fn("opus_decode", ctypes.c_int, (_P, _P, ctypes.c_int32, _P, ctypes.c_int, ctypes.c_int))
_packet_nb_samples = _fn(
    "opus_packet_get_nb_samples", ctypes.c_int, (ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32)
)
_strerror = _fn("opus_strerror", ctypes.c_char_p, (ctypes.c_int,))
_version = _fn("opus_get_version_string", ctypes.c_char_p, ())


def libopus_version() -> str:
    """The loaded libopus's version string, e.g. ``"libopus 1.3.1"``."""
    return _version().decode()


def _err(code: int) -> str:
    return f"{_strerror(code).decode()} ({code})"


class OpusEncoder:
    """One libopus encoder: VOIP, mono, 48 kHz, in-band FEC on, DTX off, VBR.

    ``encode`` takes exactly ``frame_samples`` int16 samples. Bitrate, frame duration,
    complexity and the packet-loss hint can change between any two frames; the state
    (and so the audio) runs on unbroken, which is what an Opus-to-Opus tier switch uses.
    """

    __slots__ = ("_frame_ms", "_out", "_st")

    def __init__(
        self,
        bitrate: int,
        frame_ms: int = 20,
        *,
        complexity: int = 5,
        packet_loss_perc: int = 0,
        inband_fec: bool = True,
    ) -> None:
        err = ctypes.c_int(0)
        st = _enc_create(RATE, CHANNELS, OPUS_APPLICATION_VOIP, ctypes.byref(err))
        if err.value != OPUS_OK or not st:
            raise MemoryError(f"opus_encoder_create failed: {_err(err.value)}")
        self._st: int | None = st
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self._frame_ms = 20
        self.frame_ms = frame_ms
        self._set(OPUS_SET_SIGNAL_REQUEST, OPUS_SIGNAL_VOICE)
        self._set(OPUS_SET_INBAND_FEC_REQUEST, int(inband_fec))
        self._set(OPUS_SET_DTX_REQUEST, 0)
        self.bitrate = bitrate
        self.complexity = complexity
        self.packet_loss_perc = packet_loss_perc

    # -- ctl plumbing ---------------------------------------------------------------
    def _handle(self) -> int:
        if self._st is None:
            raise CodecError("encoder is closed")
        return self._st

    def _set(self, request: int, value: int) -> None:
        rc = _enc_ctl_set(self._handle(), request, value)
        if rc != OPUS_OK:
            raise CodecError(f"opus_encoder_ctl({request}, {value}): {_err(rc)}")

    def _get(self, request: int) -> int:
        v = ctypes.c_int32(0)
        rc = _enc_ctl_get(self._handle(), request, ctypes.byref(v))
        if rc != OPUS_OK:
            raise CodecError(f"opus_encoder_ctl({request}): {_err(rc)}")
        return v.value

    # -- settings -------------------------------------------------------------------
    @property
    def bitrate(self) -> int:
        """Target bitrate in bit/s (read back from libopus)."""
        return self._get(OPUS_GET_BITRATE_REQUEST)

    @bitrate.setter
    def bitrate(self, bps: int) -> None:
        if not 500 <= bps <= 512_000:
            raise CodecError(f"Opus bitrate {bps} outside 500..512000")
        self._set(OPUS_SET_BITRATE_REQUEST, int(bps))

    @property
    def complexity(self) -> int:
        """Encoder complexity 0-10 (default here 5: CPU headroom on a Pi)."""
        return self._get(OPUS_GET_COMPLEXITY_REQUEST)

    @complexity.setter
    def complexity(self, value: int) -> None:
        if not 0 <= value <= 10:
            raise CodecError(f"Opus complexity {value} outside 0..10")
        self._set(OPUS_SET_COMPLEXITY_REQUEST, int(value))

    @property
    def packet_loss_perc(self) -> int:
        """Expected packet loss 0-100 %: more loss, more of the bitrate goes to in-band FEC."""
        return self._get(OPUS_GET_PACKET_LOSS_PERC_REQUEST)

    @packet_loss_perc.setter
    def packet_loss_perc(self, percent: float) -> None:
        p = round(min(100.0, max(0.0, float(percent))))
        self._set(OPUS_SET_PACKET_LOSS_PERC_REQUEST, p)

    @property
    def inband_fec(self) -> int:
        """``OPUS_GET_INBAND_FEC``: 1 unless turned off (the PLC-only baseline does)."""
        return self._get(OPUS_GET_INBAND_FEC_REQUEST)

    @inband_fec.setter
    def inband_fec(self, on: bool) -> None:
        self._set(OPUS_SET_INBAND_FEC_REQUEST, int(on))

    @property
    def dtx(self) -> int:
        """``OPUS_GET_DTX``: 0 (push-to-talk must not gate speech)."""
        return self._get(OPUS_GET_DTX_REQUEST)

    @property
    def lookahead(self) -> int:
        """Encoder lookahead in samples at 48 kHz (``OPUS_GET_LOOKAHEAD``)."""
        return self._get(OPUS_GET_LOOKAHEAD_REQUEST)

    @property
    def frame_ms(self) -> int:
        """Duration of the next ``encode`` call's frame, in ms."""
        return self._frame_ms

    @frame_ms.setter
    def frame_ms(self, ms: int) -> None:
        if ms not in FRAME_MS_CHOICES:
            raise CodecError(f"Opus frame {ms} ms not one of {FRAME_MS_CHOICES}")
        self._frame_ms = ms

    @property
    def frame_samples(self) -> int:
        """Samples (48 kHz) ``encode`` takes: ``frame_ms * 48``."""
        return self._frame_ms * 48

    # -- work -----------------------------------------------------------------------
    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode one frame of int16 mono 48 kHz PCM (exactly ``frame_samples`` long)."""
        st = self._handle()
        a = np.ascontiguousarray(pcm, dtype=np.int16)
        if a.ndim != 1 or len(a) != self.frame_samples:
            raise CodecError(f"Opus encoder wants {self.frame_samples} samples, got {a.shape}")
        n = _encode(st, a.ctypes.data, len(a), ctypes.addressof(self._out), MAX_PACKET_BYTES)
        if n < 0:
            raise CodecError(f"opus_encode: {_err(n)}")
        return self._out.raw[:n]

    def reset(self) -> None:
        """``OPUS_RESET_STATE``: forget the audio history, keep the settings."""
        rc = _enc_ctl_req(self._handle(), OPUS_RESET_STATE)
        if rc != OPUS_OK:
            raise CodecError(f"OPUS_RESET_STATE: {_err(rc)}")

    def close(self) -> None:
        """Free the libopus state (idempotent)."""
        if getattr(self, "_st", None) is not None:
            _enc_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()


def packet_samples(payload: bytes) -> int:
    """Samples at 48 kHz that ``payload`` decodes to; ``CodecError`` if it is not Opus."""
    if not payload:
        raise CodecError("empty Opus payload")
    n = _packet_nb_samples(payload, len(payload), RATE)
    if n < 0:
        raise CodecError(f"bad Opus packet: {_err(n)}")
    if n == 0 or n > MAX_FRAME_SAMPLES:
        raise CodecError(f"bad Opus packet: {n} samples")
    return n


class OpusDecoder:
    """One libopus decoder (48 kHz mono) for every Opus codec id (0, 1, 2, 6, 7, 8).

    Output is int16 at 48 kHz; every returned array is a fresh copy, exactly as long as
    the audio it stands for.
    """

    __slots__ = ("_buf", "_last_samples", "_st")

    def __init__(self) -> None:
        err = ctypes.c_int(0)
        st = _dec_create(RATE, CHANNELS, ctypes.byref(err))
        if err.value != OPUS_OK or not st:
            raise MemoryError(f"opus_decoder_create failed: {_err(err.value)}")
        self._st: int | None = st
        self._buf = np.zeros(MAX_FRAME_SAMPLES, dtype=np.int16)
        self._last_samples = 960

    def _handle(self) -> int:
        if self._st is None:
            raise CodecError("decoder is closed")
        return self._st

    @property
    def last_samples(self) -> int:
        """Duration of the last packet decoded (960 before the first), in samples."""
        return self._last_samples

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode one Opus packet; the length comes from the packet itself.

        Raises ``CodecError`` for an empty or structurally invalid packet. Note that a
        single-frame (code 0) packet cut short is still a valid packet to libopus: it
        decodes (to worse audio) and cannot be detected here.
        """
        st = self._handle()
        n = packet_samples(payload)
        got = _decode(st, payload, len(payload), self._buf.ctypes.data, MAX_FRAME_SAMPLES, 0)
        if got < 0:
            raise CodecError(f"opus_decode: {_err(got)}")
        if got != n:
            raise CodecError(f"opus_decode gave {got} samples, packet says {n}")
        self._last_samples = n
        return self._buf[:n].copy()

    def conceal(self, samples: int, next_payload: bytes | None = None) -> np.ndarray:
        """Fill a gap of ``samples`` (a multiple of 120, i.e. 2.5 ms, up to 5760).

        With ``next_payload`` (the packet right after the gap), the gap's last
        ``packet_samples(next_payload)`` samples are rebuilt from that packet's in-band FEC
        (``opus_decode(decode_fec=1)``), and libopus fills any earlier part, or the whole
        gap when the packet carries no FEC, by PLC. Without it: PLC
        (``opus_decode(NULL)``). The next packet must still be passed to :meth:`decode`
        afterwards. A bad ``next_payload`` falls back to PLC (its own ``decode`` will
        report it).
        """
        st = self._handle()
        if samples <= 0 or samples % 120 or samples > MAX_FRAME_SAMPLES:
            raise CodecError(f"Opus conceal needs a multiple of 120 up to 5760, got {samples}")
        got = -1
        if next_payload:
            got = _decode(st, next_payload, len(next_payload), self._buf.ctypes.data, samples, 1)
        if got < 0:
            got = _decode(st, None, 0, self._buf.ctypes.data, samples, 0)
        if got != samples:
            raise CodecError(f"opus PLC gave {got} samples, wanted {samples}")
        return self._buf[:samples].copy()

    def reset(self) -> None:
        """``OPUS_RESET_STATE``: as if freshly created."""
        rc = _dec_ctl_req(self._handle(), OPUS_RESET_STATE)
        if rc != OPUS_OK:
            raise CodecError(f"OPUS_RESET_STATE: {_err(rc)}")
        self._last_samples = 960

    def close(self) -> None:
        """Free the libopus state (idempotent)."""
        if getattr(self, "_st", None) is not None:
            _dec_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()
