"""File-backed audio for calls without a sound card (CLI ``--in/--out``, demo, tests).

A :class:`FileSource` hands out 20 ms periods of 48 kHz mono int16 from an 8, 16 or
48 kHz mono WAV (or raw s16 at 8 kHz), then silence; a :class:`FileSink` collects
periods and writes a 48 kHz WAV. They have the shape of the sound-card edge: one
period in, one period out, so the call loop does not care which it has.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .alsa import LevelMeter

SAMPLE_RATE = 48_000
PERIOD = 960  # 20 ms


class AudioFileError(Exception):
    pass


def read_audio(path: Path) -> np.ndarray:
    """48 kHz mono int16 samples of a mono WAV (8/16/48 kHz) or raw s16 (8 kHz) file."""
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as w:
                if w.getnchannels() != 1 or w.getsampwidth() != 2:
                    raise AudioFileError(f"{path}: need a mono 16-bit WAV")
                rate = w.getframerate()
                data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        except (wave.Error, EOFError) as exc:
            raise AudioFileError(f"{path}: {exc}") from None
    else:
        raw = path.read_bytes()
        data = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")
        rate = 8000
    if rate not in (8000, 16000, 48000):
        raise AudioFileError(f"{path}: {rate} Hz (need 8, 16 or 48 kHz)")
    samples = data.astype(np.int16)
    if rate == SAMPLE_RATE:
        return samples
    from math import gcd

    try:
        from scipy.signal import resample_poly
    except ImportError:  # scipy comes with the bench extra; a handset records at 48 kHz
        raise AudioFileError(
            f"{path}: {rate} Hz needs resampling (pip install 'wzp[bench]'), or give a 48 kHz WAV"
        ) from None

    g = gcd(rate, SAMPLE_RATE)
    up = resample_poly(samples.astype(np.float64), SAMPLE_RATE // g, rate // g)
    return np.clip(np.round(up), -32768, 32767).astype(np.int16)


class FileSource:
    """Periods of a file's audio, then silence (or the file again with ``loop``)."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.samples = read_audio(path)
        self.loop = loop
        self.pos = 0

    @property
    def finished(self) -> bool:
        return not self.loop and self.pos >= len(self.samples)

    def read(self) -> np.ndarray:
        out = np.zeros(PERIOD, dtype=np.int16)
        if self.loop and len(self.samples):
            idx = (np.arange(PERIOD) + self.pos) % len(self.samples)
            out[:] = self.samples[idx]
        else:
            chunk = self.samples[self.pos : self.pos + PERIOD]
            out[: len(chunk)] = chunk
        self.pos += PERIOD
        return out


class FileSink:
    """Collects played periods; :meth:`close` writes them as a 48 kHz mono WAV."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._chunks: list[np.ndarray] = []

    def write(self, pcm: np.ndarray) -> None:
        self._chunks.append(np.asarray(pcm, dtype=np.int16).copy())

    def close(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        with wave.open(str(self.path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(data.astype("<i2").tobytes())


class Silence:
    """A source with nothing to say (a call that only listens)."""

    def read(self) -> np.ndarray:
        return np.zeros(PERIOD, dtype=np.int16)


class Discard:
    """A sink that plays nothing (a call that only talks)."""

    def write(self, pcm: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class NoCardPort:
    """What a sound card port offers the daemon, for ports without a card: always "ok",
    nothing to start, nothing to drain. The levels are those of what the port's
    ``read`` and ``write`` pass (a subclass calls ``_metered_in`` / ``_metered_out``), as
    the sound card's are of what it captured and played: the daemon's silent-microphone
    check reads them."""

    def __init__(self) -> None:
        self._capture_level = LevelMeter()
        self._playback_level = LevelMeter()

    def _metered_in(self, pcm: np.ndarray) -> np.ndarray:
        self._capture_level.add(pcm)
        return pcm

    def _metered_out(self, pcm: np.ndarray) -> None:
        self._playback_level.add(pcm)

    @property
    def state(self) -> str:
        return "ok"

    @property
    def error(self) -> str | None:
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self) -> None:
        pass  # recorded audio waits for the call

    def levels(self) -> dict[str, float]:
        return {
            "capture_dbfs": self._capture_level.dbfs(),
            "playback_dbfs": self._playback_level.dbfs(),
        }

    def describe(self) -> str:
        return "files"

    def status_dict(self) -> dict[str, object]:
        return {"state": "ok", "error": None, "backend": self.describe(), **self.levels()}


class FileAudio(NoCardPort):
    """The sound card replaced by files (``file:PATH`` audio devices in the config).

    For tests and rehearsals of the whole daemon: the capture file is read only while a
    call takes audio (so it starts with the call), what is played is written as a 48 kHz
    WAV when the daemon stops. Either side may be ``None`` (silence in, nothing kept).
    """

    def __init__(self, capture: Path | None, playback: Path | None) -> None:
        super().__init__()
        self.capture = capture
        self.playback = playback
        self._source: FileSource | Silence = FileSource(capture) if capture else Silence()
        self._sink: FileSink | Discard = FileSink(playback) if playback else Discard()
        self._closed = False

    def stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink.close()

    def read(self) -> np.ndarray:
        return self._metered_in(self._source.read())

    def write(self, pcm: np.ndarray) -> None:
        self._metered_out(pcm)
        self._sink.write(pcm)

    def describe(self) -> str:
        return f"files ({self.capture or 'silence'} -> {self.playback or 'nothing'})"
