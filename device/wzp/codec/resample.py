"""48 kHz <-> 8 kHz resampling (factor 6) with a linear-phase anti-aliasing FIR.

One low-pass filter serves both directions. It is a Kaiser-windowed sinc designed with
numpy at import: 193 taps at 48 kHz, cutoff 3.8 kHz, beta 6.5. Designed response (the
tests measure it on sine tones fed in 20 ms frames):

* 0-3.0 kHz: flat (< 0.01 dB); 3.4 kHz: -0.15 dB; 4.0 kHz: -16 dB;
* 4.5 kHz and above: below -69 dB (so nothing above 4.5 kHz aliases into the 8 kHz band).

Both converters are polyphase: the decimator computes only every 6th output of the
filter, the interpolator runs six 33-tap sub-filters on the 8 kHz input instead of
filtering five inserted zeros. Each keeps its filter history across calls, so feeding a
signal frame by frame gives the same samples as feeding it at once (the tests check).

Delay: the filter is symmetric with 193 taps, so each direction delays the signal by
:data:`DELAY_48K` = 96 samples at 48 kHz (2 ms; 16 samples at 8 kHz); a round trip
48k -> 8k -> 48k delays by 192 samples (4 ms).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from .errors import CodecError

#: The resampling factor between the engine rate and the Codec2 rate.
FACTOR = 6
#: Filter length at 48 kHz; odd, with (TAPS - 1) / 2 a multiple of FACTOR, so the delay is
#: a whole number of samples at both rates.
TAPS = 193
CUTOFF_HZ = 3800.0
KAISER_BETA = 6.5
RATE_HIGH = 48_000
RATE_LOW = 8_000
#: Group delay of one direction, in samples at 48 kHz.
DELAY_48K = (TAPS - 1) // 2
#: Group delay of one direction, in samples at 8 kHz.
DELAY_8K = DELAY_48K // FACTOR


def _design() -> np.ndarray:
    """The low-pass FIR at 48 kHz, normalised to unity gain at DC."""
    n = np.arange(TAPS) - (TAPS - 1) / 2
    fc = CUTOFF_HZ / RATE_HIGH
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(TAPS, KAISER_BETA)
    return h / h.sum()


#: The prototype filter (float64, length TAPS).
FILTER: np.ndarray = _design()
FILTER.setflags(write=False)

# Decimator: output m is sum_k h[k] * x[6m - k]. Pad the reversed taps in front to
# PHASE_TAPS * 6 = 198 and fold them into a (PHASE_TAPS, 6) matrix: with the input laid out
# in rows of 6, output m = sum_r row[m + r] . _DECIM[r], so one small matrix product
# (rows x 6) @ (6 x PHASE_TAPS) and a sum along diagonals give every output (polyphase:
# each phase column meets only its own taps, and discarded outputs are never computed).
PHASE_TAPS = -(-TAPS // FACTOR)  # 33
_PAD = PHASE_TAPS * FACTOR - TAPS  # 5
_decim = np.zeros(PHASE_TAPS * FACTOR)
_decim[_PAD:] = FILTER[::-1]
_DECIM_T = np.ascontiguousarray(_decim.reshape(PHASE_TAPS, FACTOR).T)  # (6, PHASE_TAPS)
_ZPAD = np.zeros(_PAD)
del _decim

# Interpolator: zero-stuffing by 6 then filtering with 6*h is, for output 6m + p,
# sum_j 6*h[6j + p] * x[m - j]. Pad h to a multiple of 6 and lay the six phases out as the
# columns of a (PHASE_TAPS, 6) matrix applied to windows of the 8 kHz input.
_padded = np.zeros(PHASE_TAPS * FACTOR)
_padded[:TAPS] = FILTER * FACTOR
# _INTERP[k, p] multiplies window[k] = x[m - (PHASE_TAPS - 1 - k)], i.e. j = PHASE_TAPS-1-k.
_INTERP = np.ascontiguousarray(_padded.reshape(PHASE_TAPS, FACTOR)[::-1, :])
del _padded


def _to_int16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def _as_pcm(pcm: np.ndarray) -> np.ndarray:
    a = np.asarray(pcm)
    if a.ndim != 1:
        raise CodecError(f"PCM must be mono (1-D), got shape {a.shape}")
    if a.dtype != np.int16:
        raise CodecError(f"PCM must be int16, got {a.dtype}")
    return a


class Downsampler:
    """48 kHz -> 8 kHz, stateful; ``process`` takes any length (whole frames in practice)."""

    __slots__ = ("_hist", "_phase")

    def __init__(self) -> None:
        self._hist = np.zeros(TAPS - 1)
        # How many input samples to skip, after the history, before the next output's
        # window ends (0..5).
        self._phase = 0

    def reset(self) -> None:
        """Forget the history (as if the input so far had been silence)."""
        self._hist = np.zeros(TAPS - 1)
        self._phase = 0

    def prime(self, history: np.ndarray) -> None:
        """Reset and load the last input samples (48 kHz int16) as filter history.

        Use it when a converter starts mid-stream, so its first output does not fade in
        from silence.
        """
        h = _as_pcm(history).astype(np.float64)[-(TAPS - 1) :]
        self.reset()
        self._hist[TAPS - 1 - len(h) :] = h

    def process(self, pcm48: np.ndarray) -> np.ndarray:
        """Filter and decimate ``pcm48`` (int16, 48 kHz); return int16 at 8 kHz.

        The output has ``len(pcm48) // 6`` samples when the input lengths are multiples
        of 6 (every whole-millisecond frame is).
        """
        x = _as_pcm(pcm48)
        # The first output's window starts at history index ``phase``; the 5 leading
        # zeros line the 193-tap window up with the 198-tap folded filter.
        buf = np.concatenate((_ZPAD, self._hist[self._phase :], x))
        rows = len(buf) // FACTOR
        n_out = max(0, rows - PHASE_TAPS + 1)
        if n_out:
            z = buf[: rows * FACTOR].reshape(rows, FACTOR) @ _DECIM_T  # (rows, PHASE_TAPS)
            s0, s1 = z.strides
            y = as_strided(z, shape=(n_out, PHASE_TAPS), strides=(s0, s0 + s1)).sum(axis=1)
        else:
            y = np.zeros(0)
        self._phase += FACTOR * n_out - len(x)
        self._hist = buf[len(buf) - (TAPS - 1) :].copy()
        return _to_int16(y)


class Upsampler:
    """8 kHz -> 48 kHz, stateful; each input sample yields exactly 6 output samples."""

    __slots__ = ("_hist",)

    def __init__(self) -> None:
        self._hist = np.zeros(PHASE_TAPS - 1)

    def reset(self) -> None:
        """Forget the history (as if the input so far had been silence)."""
        self._hist = np.zeros(PHASE_TAPS - 1)

    def process(self, pcm8: np.ndarray) -> np.ndarray:
        """Interpolate ``pcm8`` (int16, 8 kHz); return ``6 * len(pcm8)`` int16 at 48 kHz."""
        x = _as_pcm(pcm8)
        if len(x) == 0:
            return np.zeros(0, dtype=np.int16)
        buf = np.concatenate((self._hist, x))
        y = sliding_window_view(buf, PHASE_TAPS) @ _INTERP  # (len(x), 6)
        self._hist = buf[len(buf) - (PHASE_TAPS - 1) :].copy()
        return _to_int16(y.reshape(-1))


def downsample(pcm48: np.ndarray) -> np.ndarray:
    """Stateless convenience: 48 kHz -> 8 kHz of a whole signal (history = silence)."""
    return Downsampler().process(pcm48)


def upsample(pcm8: np.ndarray) -> np.ndarray:
    """Stateless convenience: 8 kHz -> 48 kHz of a whole signal (history = silence)."""
    return Upsampler().process(pcm8)
