"""``wzp test audio``: play a tone, capture at the same time, say what came back.

No daemon is needed (and none may hold the card: a running daemon makes the devices
busy, which is reported as such, with the holding process when /proc tells). The probe

1. asks the hardware under each configured device (``plughw:CARD=X,DEV=0`` ->
   ``hw:CARD=X,DEV=0``) which of 8, 16, 44.1 and 48 kHz it accepts: many USB cards
   capture at 48 kHz only (PLATFORM.md, Audio);
2. plays a sine of -12 dBFS RMS on the playback device for ``seconds`` while capturing;
3. reports the captured level and peak, whether the tone's frequency dominates the
   capture, and ``silent`` when the capture is below -80 dBFS: a microphone that
   captures nothing is reported, not passed over (USERS.md #3).

Hearing the tone needs the microphone near the speaker (or a loopback cable); a quiet
capture that is not ``silent`` just means the mic works but did not hear the speaker.
The ``null`` device is no microphone: its capture is whatever was in pyalsaaudio's
uninitialised buffer, not silence.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wzp.audio import cards as _cards
from wzp.audio.alsa import (
    LEVEL_FLOOR_DBFS,
    PERIOD,
    RATE,
    Pcm,
    PcmOpener,
    alsa_errno,
    dbfs,
    open_pcm,
    quiet_alsa_lib,
)

PROBE_RATES = (8000, 16000, 44100, 48000)
TONE_DBFS = -12.0  # RMS, like every level here (a full-scale sine is -3 dBFS)
SILENT_DBFS = -80.0
TONE_MIN_FRACTION = 0.5  # share of the captured power near the tone's frequency
TONE_MIN_DBFS = -70.0
SETTLE_S = 0.1  # the first 100 ms are not analysed: the tone is still on its way


class _DeviceFailed(Exception):
    def __init__(self, kind: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.kind = kind
        self.exc = exc


@dataclass
class ProbeResult:
    capture_dbfs: float
    peak_dbfs: float
    tone_detected: bool
    rates: dict[str, list[int]]  # "capture hw:CARD=X,DEV=0" -> accepted rates
    error: str | None
    silent: bool = False
    tone_dbfs: float = LEVEL_FLOOR_DBFS  # power near the tone's frequency
    seconds_captured: float = 0.0
    notes: list[str] = field(default_factory=list)
    capture_device: str = ""
    playback_device: str = ""
    freq: float = 1000.0

    def describe(self) -> str:
        """Lines for ``wzp test audio``: a mark, a topic, what was found and what to do."""
        lines: list[str] = []

        def line(ok: bool | None, topic: str, text: str) -> None:
            mark = " " if ok is None else ("✓" if ok else "✗")
            lines.append(f" {mark} {topic:<10} {text}")

        if self.error is not None:
            line(False, "audio", self.error)
        else:
            level = f"{self.capture_dbfs:.1f} dBFS (peak {self.peak_dbfs:.1f})"
            if self.silent:
                line(
                    False,
                    "capture",
                    f"{self.capture_device}: silent, {level}: the microphone captures "
                    "nothing (plugged in? capture muted or at 0 in alsamixer?)",
                )
            else:
                line(True, "capture", f"{self.capture_device}: {level}")
            if self.tone_detected:
                line(
                    True,
                    "tone",
                    f"{self.freq:g} Hz from {self.playback_device} heard at "
                    f"{self.tone_dbfs:.1f} dBFS",
                )
            else:
                line(
                    False,
                    "tone",
                    f"{self.freq:g} Hz from {self.playback_device} not heard (is the "
                    "microphone near the speaker, the speaker on and unmuted?)",
                )
        for key, rates in self.rates.items():
            offered = ", ".join(f"{r}" for r in rates) or "none of 8000/16000/44100/48000"
            line(bool(rates), "rates", f"{key}: {offered} Hz")
        for note in self.notes:
            line(None, "note", note)
        return "\n".join(lines)


def rates_from_getrates(offered: Any) -> list[int]:
    """Which of :data:`PROBE_RATES` a ``PCM.getrates()`` answer includes.

    pyalsaaudio answers one int (a single rate), a ``(min, max)`` tuple (a continuous
    range) or a list of the standard rates the device accepts.
    """
    if isinstance(offered, bool):
        return []
    if isinstance(offered, int):
        return [offered] if offered in PROBE_RATES else []
    if isinstance(offered, tuple) and len(offered) == 2:
        lo, hi = offered
        return [r for r in PROBE_RATES if lo <= r <= hi]
    if isinstance(offered, list):
        accepted = set(offered)
        return [r for r in PROBE_RATES if r in accepted]
    return []


def hw_rates(device: str, kind: str) -> list[int]:
    """Rates among :data:`PROBE_RATES` that ``device`` accepts for ``kind``."""
    import alsaaudio

    quiet_alsa_lib()
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_CAPTURE if kind == "capture" else alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NONBLOCK,
        device=device,
    )
    try:
        return rates_from_getrates(pcm.getrates())
    finally:
        pcm.close()


def explain_failure(kind: str, device: str, exc: BaseException, proc: str) -> str:
    """A sentence for a device that would not open or run: missing, busy (by whom) or other."""
    import errno

    code = alsa_errno(exc)
    what = f"{kind} device {device}"
    ref = _cards.card_of(device)
    if code == errno.EBUSY:
        holders = _cards.busy_holders(ref, proc) if ref is not None else []
        who = ", ".join(h.describe() for h in holders) or "another program"
        return f"{what} is busy ({exc}): held by {who}"
    if code in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        present = _cards.list_cards(proc)
        names = ", ".join(c.id for c in present) or "none"
        if ref is not None and not _cards.card_present(device, present):
            return f"{what} cannot be opened ({exc}): card {ref} is not present (cards: {names})"
        return f"{what} cannot be opened ({exc}) (cards: {names})"
    return f"{what} failed: {exc}"


def _tone(seconds: float, freq: float) -> np.ndarray:
    n = np.arange(int(seconds * RATE))
    amplitude = 32767 * 10 ** (TONE_DBFS / 20) * math.sqrt(2)  # RMS of TONE_DBFS
    return (amplitude * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16)


def _exchange(
    cap: Pcm,
    play: Pcm,
    play_bytes: bytes,
    frames_wanted: int,
    timeout_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[np.ndarray, list[str]]:
    """Write ``play_bytes`` and read ``frames_wanted`` frames at once, at real-time pace."""
    notes: list[str] = []
    view = memoryview(play_bytes)
    chunks: list[np.ndarray] = []
    got = written = 0
    xruns = 0
    start = clock()
    lead = 2 * PERIOD
    while got < frames_wanted and clock() - start < timeout_s:
        allowed = (clock() - start) * RATE + lead  # the null device never makes us wait
        progressed = False
        if len(view) and written < allowed:
            try:
                n = play.write(view[: 2 * PERIOD])
            except Exception as exc:
                raise _DeviceFailed("playback", exc) from exc
            if n > 0:
                view = view[2 * n :]
                written += n
                progressed = True
            elif n < 0:
                xruns += 1
        if got < allowed:
            try:
                n, data = cap.read()
            except Exception as exc:
                raise _DeviceFailed("capture", exc) from exc
            if n > 0:
                chunk = np.frombuffer(data, dtype="<i2", count=min(n, len(data) // 2))
                chunks.append(chunk.copy())
                got += len(chunk)
                progressed = True
            elif n < 0:
                xruns += 1
        if not progressed:
            sleep(0.002)
    if xruns:
        notes.append(f"{xruns} overruns/underruns during the test")
    if got < frames_wanted:
        notes.append(f"captured {got / RATE:.2f} s of the {frames_wanted / RATE:.2f} s asked for")
    if not chunks:
        return np.zeros(0, dtype=np.int16), notes
    return np.concatenate(chunks)[:frames_wanted], notes


def analyse(captured: np.ndarray, freq: float) -> tuple[float, float, float, bool]:
    """(capture dBFS, peak dBFS, tone dBFS, tone detected) of int16 samples."""
    x = captured.astype(np.float64)
    if len(x) == 0:
        return LEVEL_FLOOR_DBFS, LEVEL_FLOOR_DBFS, LEVEL_FLOOR_DBFS, False
    mean_square = float(np.mean(x * x))
    level = dbfs(mean_square)
    peak = float(np.max(np.abs(x)))
    peak_dbfs = LEVEL_FLOOR_DBFS
    if peak > 0:
        peak_dbfs = max(LEVEL_FLOOR_DBFS, 20 * math.log10(peak / 32768))
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    total = float(spectrum[1:].sum())
    if total <= 0:
        return level, peak_dbfs, LEVEL_FLOOR_DBFS, False
    bin_hz = RATE / len(x)
    half_width = max(3, math.ceil(0.02 * freq / bin_hz))
    center = round(freq / bin_hz)
    band = float(spectrum[max(1, center - half_width) : center + half_width + 1].sum())
    fraction = band / total
    tone_dbfs = dbfs(mean_square * fraction)
    detected = fraction >= TONE_MIN_FRACTION and tone_dbfs >= TONE_MIN_DBFS
    return level, peak_dbfs, tone_dbfs, detected


def play_tone_and_measure(
    capture: str,
    playback: str,
    *,
    seconds: float = 1.0,
    freq: float = 1000.0,
    pcm_open: PcmOpener = open_pcm,
    list_rates: Callable[[str, str], list[int]] = hw_rates,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    proc: str = _cards.PROC_ASOUND,
) -> ProbeResult:
    """Play a ``freq`` tone on ``playback`` for ``seconds`` while capturing; report."""
    if not 0 < seconds <= 30:
        raise ValueError("seconds must be in (0, 30]")
    if not 20 <= freq <= RATE / 2 - 1000:
        raise ValueError(f"freq must be in [20, {RATE // 2 - 1000}] Hz")
    rates: dict[str, list[int]] = {}
    notes: list[str] = []
    for kind, device in (("capture", capture), ("playback", playback)):
        hw = _cards.hw_name(device)
        try:
            rates[f"{kind} {hw}"] = list_rates(hw, kind)
        except Exception as exc:
            rates[f"{kind} {hw}"] = []
            notes.append(f"could not ask {hw} for its {kind} rates: {exc}")

    names = {"capture_device": capture, "playback_device": playback, "freq": freq}

    def failed(error: str) -> ProbeResult:
        floor = LEVEL_FLOOR_DBFS
        return ProbeResult(floor, floor, False, rates, error, notes=notes, **names)

    try:
        cap = pcm_open(capture, "capture")
    except Exception as exc:
        return failed(explain_failure("capture", capture, exc, proc))
    try:
        play = pcm_open(playback, "playback")
    except Exception as exc:
        cap.close()
        return failed(explain_failure("playback", playback, exc, proc))

    settle = int(SETTLE_S * RATE)
    wanted = int(seconds * RATE) + settle
    # the tone outlasts the capture by the settle time plus a device buffer of latency;
    # it stays referenced until the end (see the module docstring about ``null``)
    tone = _tone(seconds + 2 * SETTLE_S + 0.1, freq)
    play_bytes = bytes(2 * 2 * PERIOD) + tone.tobytes()  # two periods of silence first
    try:
        captured, more = _exchange(cap, play, play_bytes, wanted, seconds + 1.0, clock, sleep)
    except _DeviceFailed as failure:
        device = capture if failure.kind == "capture" else playback
        return failed(explain_failure(failure.kind, device, failure.exc, proc) + " (mid-test)")
    finally:
        for pcm in (play, cap):
            with contextlib.suppress(Exception):
                pcm.close()
    notes.extend(more)
    if len(captured) == 0:
        return failed(f"capture device {capture} delivered no audio in {seconds + 1.0:.1f} s")
    analysed = captured[min(settle, len(captured) // 4) :]
    level, peak, tone_dbfs, detected = analyse(analysed, freq)
    return ProbeResult(
        capture_dbfs=level,
        peak_dbfs=peak,
        tone_detected=detected,
        rates=rates,
        error=None,
        silent=level < SILENT_DBFS,
        tone_dbfs=tone_dbfs,
        seconds_captured=len(captured) / RATE,
        notes=notes,
        **names,
    )
