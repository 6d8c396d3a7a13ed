"""Comfort noise (codec id 5): one payload byte gives the noise level.

Scale (as RFC 3389's noise-level byte): the low 7 bits are the level in -dBov, 0..127,
where 0 dBov is the RMS of a full-scale square wave (32767). So level L gives white noise
of RMS ``32767 * 10 ** (-L / 20)``: 0 -> full scale (clipped), 40 -> 328, 60 -> 33,
70 -> 10, 127 -> silence after rounding. The top bit is ignored; bytes after the first
(RFC 3389 spectral coefficients) are ignored too.

The noise is Gaussian, from a seeded generator (deterministic), lightly low-passed (a
two-tap average, -3 dB at 12 kHz) so it is less hissy; the RMS is set after filtering.
"""

from __future__ import annotations

import numpy as np

from .errors import CodecError

#: Level byte used by :func:`level_of` for digital silence.
SILENT_LEVEL = 127


def level_of(pcm: np.ndarray) -> int:
    """The comfort-noise level byte (-dBov, 0..127) that matches the RMS of ``pcm``."""
    a = np.asarray(pcm, dtype=np.float64)
    rms = float(np.sqrt(np.mean(a * a))) if len(a) else 0.0
    if rms <= 0.0:
        return SILENT_LEVEL
    return int(min(SILENT_LEVEL, max(0, round(-20.0 * np.log10(rms / 32767.0)))))


def level_rms(level: int) -> float:
    """RMS (int16 units) of comfort noise at level byte ``level``."""
    return 32767.0 * 10.0 ** (-(level & 0x7F) / 20.0)


class ComfortNoise:
    """Generates comfort noise at the level of the last CN payload."""

    __slots__ = ("_last", "_rng", "level")

    def __init__(self, seed: int = 0x575A50) -> None:
        self._rng = np.random.default_rng(seed)
        self._last = 0.0
        self.level = SILENT_LEVEL

    def reset(self) -> None:
        """Back to silence (the generator keeps running)."""
        self.level = SILENT_LEVEL
        self._last = 0.0

    def _noise(self, samples: int) -> np.ndarray:
        if samples < 0:
            raise CodecError(f"negative noise length {samples}")
        w = self._rng.standard_normal(samples)
        prev = np.concatenate(([self._last], w[:-1])) if samples else w
        if samples:
            self._last = float(w[-1])
        # (w[n] + w[n-1]) / sqrt(2) keeps unit variance.
        y = (w + prev) * (level_rms(self.level) / np.sqrt(2.0))
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    def decode(self, payload: bytes, samples: int = 960) -> np.ndarray:
        """Take the level from ``payload[0]`` and return ``samples`` of noise (20 ms default)."""
        if not payload:
            raise CodecError("empty comfort-noise payload")
        self.level = payload[0] & 0x7F
        return self._noise(samples)

    def conceal(self, samples: int, next_payload: bytes | None = None) -> np.ndarray:
        """More noise at the current level (a lost CN packet changes nothing audible)."""
        del next_payload
        return self._noise(samples)
