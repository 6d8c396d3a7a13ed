"""Speech files for benchmarks: load 8/16 kHz mono WAV or raw s16, resample for the pipeline."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

#: Debian's codec2-examples (installed by ./install.sh --dev)
CODEC2_RAW = Path("/usr/share/codec2/raw")
DEFAULT_SPEECH = CODEC2_RAW / "speech_orig_16k.wav"


class SpeechError(Exception):
    pass


def load_speech(path: Path | None) -> tuple[np.ndarray, int]:
    """(int16 samples, rate) of a mono 8 or 16 kHz WAV, or a raw s16 file (taken as 8 kHz)."""
    path = path or DEFAULT_SPEECH
    if not path.exists():
        hint = (
            " (./install.sh --dev installs Debian's codec2-examples)"
            if path == DEFAULT_SPEECH
            else ""
        )
        raise SpeechError(f"speech file {path} not found{hint}")
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as w:
                if w.getnchannels() != 1 or w.getsampwidth() != 2:
                    raise SpeechError(f"{path}: need mono 16-bit WAV")
                rate = w.getframerate()
                data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        except wave.Error as exc:
            raise SpeechError(f"{path}: {exc}") from None
    else:
        raw = path.read_bytes()
        data = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int16)
        rate = 8000
    if rate not in (8000, 16000):
        raise SpeechError(f"{path}: sample rate {rate} Hz (need 8 or 16 kHz)")
    if len(data) < rate:
        raise SpeechError(f"{path}: less than one second of audio")
    return data, rate


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy) for the benchmark's reference paths, as float64."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(x.astype(np.float64), rate_out // g, rate_in // g)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(samples).astype("<i2").tobytes())
