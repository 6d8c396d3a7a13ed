"""The sound card edge: ALSA capture and playback threads around two rings.

``AudioDevice(capture, playback)`` runs one thread per direction. Each thread opens its
device by name (never by card index), moves 20 ms periods of 48 kHz mono S16_LE between
the card and a :class:`~wzp.audio.ring.Ring`, and survives what a Pi's USB sound card
does (PLATFORM.md, Audio; ARCHITECTURE rules 2, 4 and 10):

- the card is absent at start, or vanishes mid-stream: the stream is closed, ``state``
  becomes ``"missing"`` with an ``error`` naming the device, and the thread tries to open
  it again by name about once per ``reopen_interval_s`` until it is back (``"ok"``). A
  stream call failing with ENODEV/ENOENT/ENXIO means missing at once; EPIPE/EIO (also
  what pyalsaaudio 0.10 raised on a plain underrun) first gets one immediate reopen,
  and only a failing reopen makes it missing;
- another program holds it: ``"busy"`` (the error names the holder when /proc tells);
- an overrun/underrun (xrun): counted; pyalsaaudio has already re-prepared the stream,
  and playback is primed with silence again;
- a stream that delivers nothing for ``stall_s`` (0.5 s): closed and reopened (counted);
  after three such stalls in a row the state is ``"error"`` ("delivers no audio") until
  audio moves again, so a dead stream is never silently "ok".

Facts about pyalsaaudio 0.11 this relies on (read from its source and checked here with
the ``null`` device and a missing card):

- ``PCM(type=, mode=, device=, rate=, channels=, format=, periodsize=, periods=)``; a
  failed open raises ``ALSAAudioError("<strerror> [<device>]")`` with the message as its
  only argument and no ``errno`` attribute (e.g. ``"No such device [hw:CARD=Device]"``,
  ``"No such file or directory [default]"`` when no card exists). :func:`alsa_errno`
  recovers the errno from the text.
- ``read()`` returns ``(frames, data)``; ``frames == -EPIPE`` is an overrun after which
  the library has called ``snd_pcm_prepare``; in non-blocking mode ``(0, b"")`` means
  "nothing yet" and a read may return fewer frames than a period.
- ``write()`` returns frames written; 0.11 returns ``-EPIPE`` on an underrun (0.10 raised
  instead) after re-preparing; non-blocking writes may be partial or 0 (no room).
- Parameters the hardware refuses are silently replaced by the nearest it accepts, so
  :func:`open_pcm` checks ``info()`` and refuses a device that is not 48 kHz mono S16_LE.
- The streams are opened ``PCM_NONBLOCK``: opening a busy ``hw:`` device then fails with
  EBUSY instead of waiting, a stalled card cannot hang a thread, and ``close()`` (which
  drains playback) returns at once; waiting happens here, in short naps.
- The ``null`` device never blocks (both directions return at once), so each thread
  paces itself against the wall clock, never more than about two periods (capture) or a
  device buffer (playback) ahead; a real card, which makes us wait, is its own clock.
  Its capture data is NOT silence: pyalsaaudio hands back an uninitialised buffer.

Threading contract: :meth:`AudioDevice.read`, :meth:`AudioDevice.write`,
:meth:`AudioDevice.drain`, ``state``, ``error``, ``stats``, :meth:`AudioDevice.levels` and
:meth:`AudioDevice.status_dict` are called from the asyncio loop's
thread and never block. Each counter has exactly one writing thread. ``on_state_change``
is called from an audio thread (the "starting"/"stopped" changes from the thread calling
start/stop); it must be quick and must not call :meth:`stop` (the daemon wraps it with
``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from wzp.audio import cards as _cards
from wzp.audio.ring import Ring

log = logging.getLogger(__name__)

RATE = 48_000
PERIOD = 960  # frames (= samples, mono) per 20 ms period
PERIOD_S = PERIOD / RATE
DEVICE_PERIODS = 4  # periods in the ALSA buffer we ask for
LEVEL_FLOOR_DBFS = -96.0
STALL_S = 0.5
CAPTURE_KEEP_PERIODS = 2  # read() trims an older capture backlog down to this
CAPTURE_MAX_BACKLOG_PERIODS = 4
ACTIVE_S = 1.0  # a side that moved audio within this long counts as "in use"
NULL_DEVICE = "null"  # ALSA's discard device: plays nothing, captures silence
STALLS_BEFORE_ERROR = 3  # reopens in a row without audio before the state says so

# states, worst first (the device reports the worst of its two streams)
MISSING, BUSY, ERROR = "missing", "busy", "error"
STARTING, OK, STOPPED = "starting", "ok", "stopped"
_SEVERITY = {MISSING: 0, BUSY: 1, ERROR: 2, STARTING: 3, OK: 4, STOPPED: 5}
_FAILED = (MISSING, BUSY, ERROR)

# a vanished card shows up as one of these (snapcast#64, shairport-sync#1609)
GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EIO, errno.EPIPE})
# unambiguous "the card is not there"; EPIPE/EIO mid-stream first get one reopen attempt
_SURELY_GONE = frozenset({errno.ENODEV, errno.ENOENT, errno.ENXIO})
_KNOWN_ERRNOS = (
    errno.ENODEV,
    errno.ENOENT,
    errno.ENXIO,
    errno.EIO,
    errno.EPIPE,
    errno.EBUSY,
    errno.EAGAIN,
    errno.EINVAL,
    errno.EACCES,
    errno.EPERM,
    errno.ESTRPIPE,
    errno.EBADFD,
    errno.ENOMEM,
)
_ERRNO_BY_TEXT = {os.strerror(code).lower(): code for code in _KNOWN_ERRNOS}


class Pcm(Protocol):
    """What the threads need of a PCM (``alsaaudio.PCM`` is one; tests pass fakes).

    ``avail()`` (frames ready to read / room to write) is used when present.
    """

    def read(self) -> tuple[int, bytes]: ...

    def write(self, data: bytes) -> int: ...

    def close(self) -> None: ...


PcmOpener = Callable[[str, str], Pcm]  # (device name, "capture" | "playback") -> Pcm


class AudioFormatError(Exception):
    """The device opened but cannot do 48 kHz mono S16_LE."""


class _Stalled(Exception):
    def __init__(self, moved: bool) -> None:
        super().__init__("stalled")
        self.moved = moved  # audio moved between the open and the stall


def alsa_errno(exc: BaseException) -> int | None:
    """The errno behind an ALSA failure: an ``errno`` attribute, else read from the text.

    pyalsaaudio formats errors as ``"<snd_strerror> [<device>]"``; alsa-lib says
    "cannot find card" for a card that is not there.
    """
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    text = str(exc).lower()
    head = text.split(" [", 1)[0].strip()
    if head in _ERRNO_BY_TEXT:
        return _ERRNO_BY_TEXT[head]
    if "cannot find card" in text:
        return errno.ENODEV
    for message, code in _ERRNO_BY_TEXT.items():
        if message in text:
            return code
    return None


# -- alsa-lib's own stderr chatter ----------------------------------------------------------

_quiet_lock = threading.Lock()
_quiet_handler: Any = None


def quiet_alsa_lib() -> bool:
    """Route alsa-lib's error printing to this module's DEBUG log instead of stderr.

    While a card is missing, every reopen attempt makes alsa-lib print several
    "cannot find card" lines to stderr (that is, the journal) once a second; our own log
    already says what failed. Returns False if libasound cannot be loaded (no harm done).
    """
    global _quiet_handler
    with _quiet_lock:
        if _quiet_handler is not None:
            return True
        try:
            lib = ctypes.CDLL("libasound.so.2")
        except OSError:
            return False
        # void handler(const char *file, int line, const char *function, int err,
        #              const char *fmt, ...): the variadic tail is ignored
        proto = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )

        def handler(file: bytes | None, line: int, func: bytes | None, err: int, fmt: Any) -> None:
            with contextlib.suppress(Exception):  # nothing may escape into C
                log.debug(
                    "alsa-lib %s:%d (%s) %s%s",
                    (file or b"?").decode(errors="replace"),
                    line,
                    (func or b"?").decode(errors="replace"),
                    (fmt or b"").decode(errors="replace"),
                    f" [{os.strerror(abs(err))}]" if err else "",
                )

        callback = proto(handler)
        lib.snd_lib_error_set_handler.argtypes = [proto]
        lib.snd_lib_error_set_handler.restype = ctypes.c_int
        lib.snd_lib_error_set_handler(callback)
        _quiet_handler = callback  # keep it alive: alsa-lib holds a raw pointer
        return True


def open_pcm(device: str, kind: str) -> Pcm:
    """Open ``device`` by name for ``kind`` ("capture"/"playback"): 48 kHz mono S16_LE,
    20 ms periods, non-blocking. Raises ``alsaaudio.ALSAAudioError`` or
    :class:`AudioFormatError`."""
    import alsaaudio

    quiet_alsa_lib()
    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_CAPTURE if kind == "capture" else alsaaudio.PCM_PLAYBACK,
        mode=alsaaudio.PCM_NONBLOCK,
        device=device,
        rate=RATE,
        channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=PERIOD,
        periods=DEVICE_PERIODS,
    )
    info = pcm.info()
    got = (info.get("rate"), info.get("channels"), info.get("format_name"))
    if got != (RATE, 1, "S16_LE"):
        pcm.close()
        hint = ""
        if device.startswith("hw:"):
            hint = f"; the plug device plug{device} converts"
        raise AudioFormatError(
            f"{device} cannot do 48000 Hz mono S16_LE (it set {got[0]} Hz, {got[1]} channels,"
            f" {got[2]}){hint}"
        )
    return pcm


# -- bookkeeping ----------------------------------------------------------------------------


@dataclass
class AudioStats:
    capture_overruns: int = 0  # captured audio dropped: the capture ring was full while read
    capture_underruns: int = 0  # read() found no full period and returned zeros
    capture_dropped: int = 0  # periods of stale capture backlog read() discarded
    playback_underruns: int = 0  # silence periods played while write() was feeding audio
    playback_dropped: int = 0  # periods dropped to keep playback delay bounded
    playback_rejected: int = 0  # write() calls refused (not a 1-D integer array)
    xruns: int = 0  # overruns/underruns ALSA reported (both streams)
    reopens: int = 0  # streams closed and reopened (stall or stream error)
    recoveries: int = 0  # streams back to "ok" after missing/busy/error
    card_gone: int = 0  # streams that went from "ok" to "missing"
    periods_in: int = 0  # periods captured from the card
    periods_out: int = 0  # periods written to the card (silence included)


class LevelMeter:
    """Mean square of the last ~1 s of one stream. One writer (the audio thread)."""

    SLOTS = 50

    def __init__(self) -> None:
        self._sumsq = np.zeros(self.SLOTS)
        self._count = np.zeros(self.SLOTS)
        self._i = 0

    def add(self, samples: np.ndarray) -> None:
        x = samples.astype(np.float64)
        slot = self._i % self.SLOTS
        self._sumsq[slot] = float(np.dot(x, x))
        self._count[slot] = len(x)
        self._i += 1

    def clear(self) -> None:
        self._count[:] = 0
        self._sumsq[:] = 0

    def dbfs(self) -> float:
        count = float(self._count.sum())
        if count <= 0:
            return LEVEL_FLOOR_DBFS
        return dbfs(float(self._sumsq.sum()) / count)


def dbfs(mean_square: float) -> float:
    """dBFS of a mean square of int16 samples (full-scale square = 0 dBFS), floored."""
    if mean_square <= 0:
        return LEVEL_FLOOR_DBFS
    return max(LEVEL_FLOOR_DBFS, 10 * math.log10(mean_square / (32768.0 * 32768.0)))


class _Pacer:
    """Keeps a stream that never makes us wait (the ``null`` device) at real time.

    A real card makes the thread wait for data (capture) or room (playback); each such
    wait re-anchors the pacer on "now", so it never delays a real card. A device that
    always returns at once may get at most ``lead_s`` ahead of the wall clock; falling
    behind by more than ``lead_s`` re-anchors too, so a backlog never becomes a burst.
    """

    def __init__(self, clock: Callable[[], float], lead_s: float) -> None:
        self.clock = clock
        self.lead = lead_s
        self.reset()

    def reset(self) -> None:
        self.t0 = self.clock()
        self.frames = 0

    def device_paced(self) -> None:
        self.t0 = self.clock() - self.frames / RATE

    def advance(self, frames: int) -> float:
        """Account ``frames`` moved; returns how long to sleep (0 when not ahead)."""
        self.frames += frames
        now = self.clock()
        due = self.t0 + self.frames / RATE
        if now - due > self.lead:
            self.t0 = now - self.lead - self.frames / RATE
            due = now - self.lead
        return max(0.0, due - now - self.lead)


class _Stream:
    """One direction. Its counters are written by its own thread only."""

    def __init__(self, kind: str, device: str) -> None:
        self.kind = kind
        self.device = device
        self.state = STOPPED
        self.error: str | None = None
        self.xruns = 0
        self.reopens = 0
        self.recoveries = 0
        self.card_gone = 0
        self.frames = 0
        self.level = LevelMeter()
        self.thread: threading.Thread | None = None


def _periods(samples: int) -> int:
    return -(-samples // PERIOD)


# -- the device -----------------------------------------------------------------------------


class AudioDevice:
    """Capture and playback threads for one handset; see the module docstring."""

    def __init__(
        self,
        capture: str,
        playback: str,
        *,
        pcm_open: PcmOpener = open_pcm,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        reopen_interval_s: float = 1.0,
        ring_periods: int = 10,
        playback_prime_periods: int = 2,
        stall_s: float = STALL_S,
        on_state_change: Callable[[str, str | None], None] | None = None,
        proc: str = _cards.PROC_ASOUND,
    ) -> None:
        if ring_periods < 2:
            raise ValueError("ring_periods must be at least 2")
        if reopen_interval_s <= 0:
            raise ValueError("reopen_interval_s must be positive")
        self._cap = _Stream("capture", capture)
        self._play = _Stream("playback", playback)
        self._pcm_open = pcm_open
        self._clock = clock
        self._sleep = sleep
        self.reopen_interval_s = reopen_interval_s
        self.ring_periods = ring_periods
        self.playback_prime_periods = max(0, playback_prime_periods)
        self.stall_s = stall_s
        self.on_state_change = on_state_change
        self._proc = proc
        self._cap_ring = Ring(ring_periods * PERIOD)
        # twice the bound: the playback thread trims to ring_periods before the writer
        # ever finds it full, unless the card is gone
        self._play_ring = Ring(2 * ring_periods * PERIOD)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._reported: tuple[str, str | None] = (STOPPED, None)
        # written by the asyncio thread only
        self._capture_dropped = 0
        self._play_dropped_writer = 0
        self._play_rejected = 0
        self._last_read_t = -math.inf
        self._last_write_t = -math.inf
        # written by the capture thread only
        self._cap_overruns = 0
        # written by the playback thread only
        self._play_underruns = 0
        self._play_dropped_thread = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start both threads (returns at once; a missing card is not an error here)."""
        if any(s.thread is not None and s.thread.is_alive() for s in (self._cap, self._play)):
            return
        self._stopping.clear()
        for stream, pump in ((self._cap, self._pump_capture), (self._play, self._pump_playback)):
            self._set(stream, STARTING, None)
            stream.thread = threading.Thread(
                target=self._run, args=(stream, pump), name=f"wzp-audio-{stream.kind}", daemon=True
            )
            stream.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and wait for them to exit (rule 4). Idempotent."""
        self._stopping.set()
        for stream in (self._cap, self._play):
            thread = stream.thread
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s thread did not stop within %.1f s", thread.name, timeout)
                continue
            stream.thread = None
        for stream in (self._cap, self._play):
            if stream.thread is None:
                self._set(stream, STOPPED, None)

    # -- asyncio side -------------------------------------------------------------------

    def read(self) -> np.ndarray:
        """One period (960 int16 samples) of captured audio; zeros (counted) if none."""
        ring = self._cap_ring
        self._last_read_t = self._clock()
        backlog = ring.available()
        if backlog > CAPTURE_MAX_BACKLOG_PERIODS * PERIOD:
            # nobody read for a while (between calls) or the card runs fast: old audio
            # is stale, keep only the newest
            skipped = ring.skip(backlog - CAPTURE_KEEP_PERIODS * PERIOD)
            self._capture_dropped += _periods(skipped)
        out = ring.read(PERIOD)
        if out is None:
            return np.zeros(PERIOD, dtype=np.int16)
        return out

    def write(self, pcm: np.ndarray) -> None:
        """Queue audio for playback (any length; int16, other integers are clipped)."""
        data = np.asarray(pcm)
        if data.ndim != 1 or data.dtype.kind not in "iu":
            self._play_rejected += 1
            if self._play_rejected == 1:
                log.warning(
                    "playback write refused: need 1-D int16 samples, got %s %s",
                    data.dtype,
                    data.shape,
                )
            return
        if data.dtype != np.int16:
            data = np.clip(data, -32768, 32767).astype(np.int16)
        self._last_write_t = self._clock()
        written = self._play_ring.write(data)
        if written < len(data):
            self._play_dropped_writer += _periods(len(data) - written)

    def drain(self) -> None:
        """Discard captured audio nobody wants (between calls; not counted as a loss).

        Between calls nothing is written either: the playback ring running dry after a
        hang-up is the end of the call's audio, not an underrun (QA saw 49 of them counted
        at every hang-up), and a full capture ring is not an overrun."""
        ring = self._cap_ring
        ring.skip(ring.available())
        self._last_read_t = self._last_write_t = -math.inf

    @property
    def state(self) -> str:
        return self._combined()[0]

    @property
    def error(self) -> str | None:
        return self._combined()[1]

    @property
    def streams(self) -> dict[str, tuple[str, str | None]]:
        """Per direction: (state, error), e.g. for ``wzp status``."""
        return {s.kind: (s.state, s.error) for s in (self._cap, self._play)}

    @property
    def stats(self) -> AudioStats:
        cap, play = self._cap, self._play
        return AudioStats(
            capture_overruns=self._cap_overruns,
            capture_underruns=self._cap_ring.underruns,
            capture_dropped=self._capture_dropped,
            playback_underruns=self._play_underruns,
            playback_dropped=self._play_dropped_writer + self._play_dropped_thread,
            playback_rejected=self._play_rejected,
            xruns=cap.xruns + play.xruns,
            reopens=cap.reopens + play.reopens,
            recoveries=cap.recoveries + play.recoveries,
            card_gone=cap.card_gone + play.card_gone,
            periods_in=cap.frames // PERIOD,
            periods_out=play.frames // PERIOD,
        )

    def levels(self) -> dict[str, float]:
        """RMS level of the last ~1 s in dBFS (floor -96): captured and played audio."""
        return {"capture_dbfs": self._cap.level.dbfs(), "playback_dbfs": self._play.level.dbfs()}

    def status_dict(self) -> dict[str, Any]:
        """State, per-stream state, levels (0.1 dB) and counters, JSON-ready."""
        state, error = self._combined()
        out: dict[str, Any] = {"state": state, "error": error}
        for stream in (self._cap, self._play):
            out[f"{stream.kind}_state"] = stream.state
            out[f"{stream.kind}_error"] = stream.error
        out.update({k: round(v, 1) for k, v in self.levels().items()})
        out.update(asdict(self.stats))
        return out

    # -- state --------------------------------------------------------------------------

    def _combined(self) -> tuple[str, str | None]:
        streams = (self._cap, self._play)
        worst = min(streams, key=lambda s: _SEVERITY[s.state]).state
        errors = [s.error for s in streams if s.error]
        return worst, "; ".join(errors) if errors else None

    def _set(self, stream: _Stream, state: str, error: str | None) -> None:
        with self._lock:
            before = (stream.state, stream.error)
            if state == MISSING and stream.state == OK:
                stream.card_gone += 1
            stream.state, stream.error = state, error
            if (state, error) != before:
                if state in _FAILED:
                    log.warning("%s", error)
                elif state == OK and before[0] in _FAILED:
                    log.info("%s device %s is back", stream.kind, stream.device)
            combined = self._combined()
            if combined == self._reported:
                return
            self._reported = combined
            callback = self.on_state_change
            if callback is None:
                return
            try:
                callback(*combined)
            except Exception:
                log.exception("audio on_state_change callback failed")

    def _describe(self, stream: _Stream, exc: BaseException, opening: bool) -> tuple[str, str]:
        code = alsa_errno(exc)
        what = f"{stream.kind} device {stream.device}"
        if isinstance(exc, AudioFormatError):
            return ERROR, f"{what} cannot be used: {exc}"
        if code == errno.EBUSY:
            text = f"{what} is busy ({exc}): another program holds it"
            ref = _cards.card_of(stream.device)
            holders = _cards.busy_holders(ref, self._proc) if ref is not None else []
            if holders:
                text += ": " + ", ".join(h.describe() for h in holders)
            return BUSY, text
        if code in GONE_ERRNOS:
            verb = "is missing" if opening else "went away"
            return MISSING, (
                f"{what} {verb} ({exc}); trying to open it again every {self.reopen_interval_s:g} s"
            )
        if code in (errno.EACCES, errno.EPERM):
            return ERROR, f"{what} cannot be opened ({exc}): is the user in the audio group?"
        return ERROR, f"{what} failed: {type(exc).__name__}: {exc}"

    # -- threads ------------------------------------------------------------------------

    def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` by the injected clock, in slices, returning early on stop."""
        end = self._clock() + seconds
        while not self._stopping.is_set():
            left = end - self._clock()
            if left <= 0:
                return
            self._sleep(min(left, 0.05))

    def _wait_device(self, pcm: Pcm, want_frames: int) -> None:
        """Nothing to read / no room to write: wait about until ``want_frames`` are."""
        wait = PERIOD_S / 4
        avail = getattr(pcm, "avail", None)
        if avail is not None:
            try:
                have = int(avail())
            except Exception:
                have = -1
            if have >= 0:
                wait = min(PERIOD_S, max(0.001, (want_frames - have) / RATE + 0.001))
        self._nap(wait)

    def _flowing(self, stream: _Stream) -> None:
        """Audio moves: the stream is ``ok`` (again)."""
        if stream.state in _FAILED:
            stream.recoveries += 1
        self._set(stream, OK, None)

    def _run(self, stream: _Stream, pump: Callable[[_Stream, Pcm], None]) -> None:
        stalls = 0  # stalls in a row with no audio in between
        try:
            while not self._stopping.is_set():
                try:
                    pcm = self._pcm_open(stream.device, stream.kind)
                except Exception as exc:
                    self._set(stream, *self._describe(stream, exc, opening=True))
                    self._nap(self.reopen_interval_s)
                    continue
                if stalls < STALLS_BEFORE_ERROR:
                    self._flowing(stream)  # else it stays "error" until audio moves
                opened = self._clock()
                nap = 0.0
                try:
                    pump(stream, pcm)
                except _Stalled as stall:
                    stream.reopens += 1
                    stalls = 1 if stall.moved else stalls + 1
                    text = (
                        f"{stream.kind} device {stream.device} delivers no audio (stalled"
                        f" {stalls} times in a row, {self.stall_s:g} s each); reopening"
                    )
                    if stalls >= STALLS_BEFORE_ERROR:
                        self._set(stream, ERROR, text)
                        nap = self.reopen_interval_s
                    else:
                        log.warning("%s", text)
                except Exception as exc:
                    stalls = 0
                    state, text = self._describe(stream, exc, opening=False)
                    if state == MISSING and alsa_errno(exc) in _SURELY_GONE:
                        self._set(stream, state, text)
                        nap = self.reopen_interval_s
                    else:
                        # EPIPE/EIO/other: one reopen tells a hiccup from a vanished card
                        stream.reopens += 1
                        log.warning("%s; reopening", text)
                        if self._clock() - opened < self.reopen_interval_s:
                            nap = self.reopen_interval_s  # failing fast: do not spin
                finally:
                    try:
                        pcm.close()
                    except Exception as exc:  # a vanished card may refuse even this
                        log.debug("closing %s device: %s", stream.kind, exc)
                    stream.level.clear()
                if nap:
                    self._nap(nap)
        except Exception:  # a bug here must not silently kill audio for good
            log.exception("%s audio thread crashed", stream.kind)
            self._set(stream, ERROR, f"{stream.kind} audio thread crashed (see the log)")
            return
        self._set(stream, STOPPED, None)

    def _check_stall(self, last_progress: float, moved: bool) -> None:
        if self._clock() - last_progress > self.stall_s:
            raise _Stalled(moved)

    def _pump_capture(self, stream: _Stream, pcm: Pcm) -> None:
        ring = self._cap_ring
        pacer = _Pacer(self._clock, 2 * PERIOD_S)
        last_progress = self._clock()
        moved = False
        while not self._stopping.is_set():
            frames, data = pcm.read()
            if frames < 0:  # -EPIPE: overrun; pyalsaaudio has re-prepared the stream
                stream.xruns += 1
                log.debug("capture overrun on %s (%d)", stream.device, frames)
                self._check_stall(last_progress, moved)
                self._nap(PERIOD_S / 4)
                pacer.reset()
                continue
            if frames == 0:  # nothing yet: the card is the clock
                pacer.device_paced()
                self._check_stall(last_progress, moved)
                self._wait_device(pcm, PERIOD)
                continue
            samples = np.frombuffer(data, dtype="<i2", count=min(frames, len(data) // 2))
            if stream.device == NULL_DEVICE:
                # alsa-lib's null plugin hands back whatever the buffer held (heap bytes
                # were seen here): a "null" microphone captures silence, nothing else
                samples = np.zeros(len(samples), dtype=np.int16)
            written = ring.write(samples)
            if written < len(samples) and self._clock() - self._last_read_t < ACTIVE_S:
                self._cap_overruns += 1
            stream.level.add(samples)
            stream.frames += len(samples)
            last_progress = self._clock()
            if not moved:
                moved = True
                if stream.state != OK:
                    self._flowing(stream)
            delay = pacer.advance(len(samples))
            if delay > 0:
                self._nap(delay)

    def _prime(self, stream: _Stream, pcm: Pcm) -> None:
        """Start playback with silence so the first real period never underruns (rule 10)."""
        silence = bytes(2 * PERIOD * self.playback_prime_periods)
        view = memoryview(silence)
        for _ in range(4 * max(1, self.playback_prime_periods)):
            if not view:
                break
            n = pcm.write(view)
            if n <= 0:
                break
            stream.frames += n
            view = view[2 * n :]

    def _next_playback_period(self, stream: _Stream) -> np.ndarray:
        ring = self._play_ring
        excess = ring.available() - self.ring_periods * PERIOD
        if excess > 0:  # delay must not grow: drop the oldest
            self._play_dropped_thread += _periods(ring.skip(excess))
        chunk = ring.read(PERIOD)
        if chunk is None:
            chunk = np.zeros(PERIOD, dtype=np.int16)
            if self._clock() - self._last_write_t < ACTIVE_S:
                self._play_underruns += 1  # audio is flowing but this period is missing
        stream.level.add(chunk)
        return chunk

    def _pump_playback(self, stream: _Stream, pcm: Pcm) -> None:
        ring = self._play_ring
        stale = ring.available() - PERIOD
        if stale > 0:  # queued while the card was away: too old to play now
            self._play_dropped_thread += _periods(ring.skip(stale))
        self._prime(stream, pcm)
        pacer = _Pacer(self._clock, (DEVICE_PERIODS + 1) * PERIOD_S)
        pending: memoryview | None = None
        last_progress = self._clock()
        moved = False
        while not self._stopping.is_set():
            if pending is None or len(pending) == 0:
                pending = memoryview(self._next_playback_period(stream).tobytes())
            frames = pcm.write(pending)
            if frames < 0:  # -EPIPE: underrun; re-prepared by pyalsaaudio
                stream.xruns += 1
                log.debug("playback underrun on %s (%d)", stream.device, frames)
                self._check_stall(last_progress, moved)
                self._prime(stream, pcm)
                pacer.reset()
                continue
            if frames == 0:  # no room: the card is the clock
                pacer.device_paced()
                self._check_stall(last_progress, moved)
                self._wait_device(pcm, len(pending) // 2)
                continue
            stream.frames += frames
            pending = pending[2 * frames :]
            last_progress = self._clock()
            if not moved:
                moved = True
                if stream.state != OK:
                    self._flowing(stream)
            delay = pacer.advance(frames)
            if delay > 0:
                self._nap(delay)
