"""The resource monitor: caps media quality when the Pi runs short of CPU or heat budget.

Inputs (edges, each injectable and each allowed to be absent, as on a laptop):

* process CPU time (``os.times``), turned into the share of one core between samples;
* SoC temperature from ``/sys/class/thermal``;
* the firmware's throttling flags (``get_throttled``: sysfs file, else ``vcgencmd``);
* deadline misses reported by the audio loop (a 20 ms tick that ran late).

Output: :class:`Caps` (Opus complexity, ladder tiers the controller must not use), from
the pure policy :func:`decide_caps`, with hysteresis so caps do not flap. The daemon
applies them with ``TierCodec.set_complexity`` and ``MediaEndpoint.forbid_tiers``.

All times (``now`` arguments, deadline-miss stamps) come from one monotonic clock, the
event loop's ``loop.time()`` in the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..media.codecs import DEFAULT_COMPLEXITY
from ..media.ladder import LADDER

log = logging.getLogger(__name__)

# -- throttling flags --------------------------------------------------------------------

#: ``vcgencmd get_throttled`` bits (Raspberry Pi documentation, "get_throttled"): 0-3 are
#: the state now, 16-19 the same conditions "has occurred since boot".
UNDER_VOLTAGE = 1 << 0
ARM_FREQ_CAPPED = 1 << 1
THROTTLED = 1 << 2
SOFT_TEMP_LIMIT = 1 << 3
NOW_MASK = UNDER_VOLTAGE | ARM_FREQ_CAPPED | THROTTLED | SOFT_TEMP_LIMIT

THROTTLED_BITS: dict[int, str] = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "under-voltage has occurred",
    17: "arm frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}

GET_THROTTLED_SYSFS = "/sys/devices/platform/soc/soc:firmware/get_throttled"
_VCGENCMD_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+|[0-9]+)")
_U32 = 0xFFFF_FFFF


def decode_throttled(flags: int) -> list[str]:
    """The documented meaning of each set bit, lowest first; unknown bits as ``bit N``."""
    if flags < 0:
        raise ValueError(f"throttled flags cannot be negative: {flags}")
    out = []
    bit = 0
    while flags >> bit:
        if (flags >> bit) & 1:
            out.append(THROTTLED_BITS.get(bit, f"bit {bit}"))
        bit += 1
    return out


def parse_throttled(text: str, *, vcgencmd: bool) -> int:
    """Flags from the sysfs file (``50005``: bare hex) or vcgencmd (``throttled=0x50005``).

    Raises ValueError on anything else.
    """
    s = text.strip()
    if vcgencmd:
        m = _VCGENCMD_RE.fullmatch(s)
        if m is None:
            raise ValueError(f"unexpected vcgencmd output {s[:60]!r}")
        value = int(m.group(1), 0)
    else:
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]{1,8}", s):
            raise ValueError(f"unexpected get_throttled contents {s[:60]!r}")
        value = int(s, 16)
    if value > _U32:
        raise ValueError(f"throttled flags {value:#x} exceed 32 bits")
    return value


class ThrottledReader:
    """Reads the firmware's throttling flags; a callable ``() -> int | None``.

    First the sysfs file the Raspberry Pi kernel's firmware driver exports (bare hex,
    the firmware's flags as its hwmon poll last saw them; some kernels mark the file
    deprecated and log a one-time warning on the first read), else ``vcgencmd
    get_throttled`` with a timeout. Synchronous (vcgencmd may block up to ``timeout_s``):
    call it through ``asyncio.to_thread``, as :meth:`ResourceMonitor.sample_async` does.

    ``None`` when neither source exists (not a Pi) or when a source failed; a failure
    (unreadable file, garbage, timeout, non-zero exit) is counted in ``failures``. After
    ``give_up_after`` consecutive vcgencmd failures it is not run again, so a Pi whose
    service user cannot reach the firmware (no ``video`` group) does not fork every
    second for nothing.
    """

    def __init__(
        self,
        sysfs: str | Path = GET_THROTTLED_SYSFS,
        vcgencmd: str = "vcgencmd",
        *,
        timeout_s: float = 1.0,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        which: Callable[[str], str | None] = shutil.which,
        give_up_after: int = 5,
    ) -> None:
        self.sysfs = Path(sysfs)
        self.vcgencmd = vcgencmd
        self.timeout_s = timeout_s
        self._run = run
        self._which = which
        self.give_up_after = give_up_after
        self.failures = 0
        self.last_error: str | None = None
        #: where the last good value came from: "sysfs", "vcgencmd" or None
        self.source: str | None = None
        self._vc_failures_in_row = 0
        self._vc_disabled = False

    def _fail(self, message: str) -> None:
        self.failures += 1
        if message != self.last_error:
            log.warning("throttling flags: %s", message)
        self.last_error = message

    def __call__(self) -> int | None:
        value = self._from_sysfs()
        if value is None:
            value = self._from_vcgencmd()
        return value

    def _from_sysfs(self) -> int | None:
        try:
            text = self.sysfs.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._fail(f"{self.sysfs}: {exc.strerror or exc}")
            return None
        try:
            value = parse_throttled(text, vcgencmd=False)
        except ValueError as exc:
            self._fail(f"{self.sysfs}: {exc}")
            return None
        self.source = "sysfs"
        return value

    def _from_vcgencmd(self) -> int | None:
        if self._vc_disabled:
            return None
        path = self._which(self.vcgencmd)
        if path is None:
            return None
        try:
            proc = self._run(
                [path, "get_throttled"],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError:
            return None  # removed between which() and exec
        except subprocess.TimeoutExpired:
            return self._vc_fail(f"vcgencmd get_throttled took over {self.timeout_s:g} s")
        except OSError as exc:
            return self._vc_fail(f"vcgencmd get_throttled: {exc.strerror or exc}")
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            why = detail[0][:80] if detail else "no output"
            return self._vc_fail(f"vcgencmd get_throttled exited {proc.returncode}: {why}")
        try:
            value = parse_throttled(proc.stdout or "", vcgencmd=True)
        except ValueError as exc:
            return self._vc_fail(str(exc))
        self._vc_failures_in_row = 0
        self.source = "vcgencmd"
        return value

    def _vc_fail(self, message: str) -> None:
        self._fail(message)
        self._vc_failures_in_row += 1
        if self._vc_failures_in_row >= self.give_up_after:
            self._vc_disabled = True
            log.warning(
                "throttling flags: vcgencmd failed %d times in a row; not running it again",
                self._vc_failures_in_row,
            )
        return None


#: a shared reader for one-off use (``wzp status`` without a daemon); a monitor makes its own
read_throttled = ThrottledReader()


# -- CPU time and temperature ------------------------------------------------------------


def read_cpu_times() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    t = os.times()
    return t.user + t.system


#: thermal zone types of the SoC sensor (Raspberry Pi kernels: ``cpu-thermal``)
SOC_ZONE_TYPES = frozenset({"cpu-thermal", "cpu_thermal", "soc_thermal", "soc-thermal"})


def _zone_number(path: Path) -> int | None:
    suffix = path.name[len("thermal_zone") :]
    return int(suffix) if suffix.isdigit() else None


def read_temperature_c(sysfs: str | Path = "/sys/class/thermal") -> float | None:
    """SoC temperature in °C from ``thermal_zone*/temp`` (millidegrees), or None.

    Takes the zone whose ``type`` names the SoC sensor, else ``thermal_zone0``, else the
    lowest-numbered zone. None when there is no zone or its value is unreadable or absurd.
    """
    base = Path(sysfs)
    try:
        zones = [(n, p) for p in base.glob("thermal_zone*") if (n := _zone_number(p)) is not None]
    except OSError:
        return None
    if not zones:
        return None
    zones.sort()
    chosen = None
    for _, zone in zones:
        try:
            kind = (zone / "type").read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if kind in SOC_ZONE_TYPES:
            chosen = zone
            break
    if chosen is None:
        chosen = zones[0][1]  # zone0 when it exists: the list is sorted by number
    try:
        raw = (chosen / "temp").read_text(encoding="ascii", errors="replace").strip()
        value = int(raw) / 1000.0
    except (OSError, ValueError):
        return None
    if not -60.0 <= value <= 200.0:
        return None
    return value


# -- policy ------------------------------------------------------------------------------

#: the most robust tier: never forbidden, so a call survives a terrible link on a hot Pi
ROBUST_TIER = LADDER[-1].name
MAX_LEVEL = 2

#: Opus complexity per level. 8 (the default) is where the Opus tiers reach their quality;
#: the encoder is about half of the media path's CPU (codecs.py), so 4 and then 2 are
#: what a small Pi can give up first, at a PESQ cost of a few tenths.
LEVEL_COMPLEXITY: tuple[int, ...] = (DEFAULT_COMPLEXITY, 4, 2)

# Which tiers level 2 forbids, from bench/results/cpu.json and transport.json (x86_64;
# a Pi 3B+ core is ~15-17x slower, a Zero 2 W ~22x):
#
#   media path (codec + FEC + crypto, both directions, pure-Python FEC as on a Pi),
#   ms of CPU per 20 ms of audio:
#       clear 0.43  light 0.40  heavy 0.42  dense 0.43  severe 0.42  extreme 0.18
#       (a later run, on a quieter machine: 0.23-0.26 for every Opus tier, deep
#       included, and 0.21 for extreme)
#   packets per second one way (K + R per block of K packets):
#       clear 22    light 21    heavy 33    dense 42    severe 46    deep 48   extreme 78
#
# Every Opus tier costs the same media-path CPU (the spread, +-4 %, is noise; FEC
# decode is about 0.2 ms per second of audio even for severe's 2+9 blocks), so
# forbidding Opus tiers by "codec cost" would pretend. What differs is the packet rate:
# the whole handset process (QUIC included) took 4.7 % of a core here at 22 packets/s
# and 5.7 % at 61 (transport bench, 30 % loss, the earlier ladder of 60 ms packets):
# about one point for ~39 more packets a second, i.e. roughly 20 points of a Zero 2 W
# core. (With this ladder 30 % loss runs heavy at 33 packets/s: 5.8 % against 6.0 % at
# 0 %, the same within the noise.) So level 2 forbids the Opus tiers with the most
# repair packets: dense, severe and deep (48 packets/s). A link that wants dense then
# gets heavy (R=6 of 2: holds ~35 % loss instead of ~48 %), one that wants severe or
# deep gets extreme: Codec2's media path costs 40 % of Opus', which outweighs its 78
# packets/s (the controller counts its distance from severe past deep, test_burst.py).
# heavy stays allowed: forbidding it too would drop 20-35 % loss links to light.
LEVEL_FORBIDDEN: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset(),
    frozenset({"dense", "severe", "deep"}),
)


@dataclass(frozen=True, slots=True)
class Readings:
    """One sample. None where a source is absent or has no value yet."""

    at: float
    #: process CPU share of one core (%) since the previous sample; may exceed 100 with threads
    cpu_pct: float | None
    temp_c: float | None
    throttled: int | None
    #: deadline misses reported in the last ``Limits.miss_window_s``
    deadline_misses: int = 0


@dataclass(frozen=True, slots=True)
class Caps:
    """What the media path may use now.

    ``max_frame_ms`` caps the packet duration (None: no cap). This policy never sets it:
    every tier's packet duration is fixed by the ladder, and shorter packets would only
    raise the packet rate, which is what costs (see LEVEL_FORBIDDEN).
    Apply when :attr:`limits` changes; ``reasons`` changes with every sample.
    """

    complexity: int
    forbidden_tiers: frozenset[str]
    max_frame_ms: int | None
    reasons: tuple[str, ...]
    level: int = 0
    #: when this level was entered (monitor clock); samples up to it do not count again
    since: float = float("-inf")

    @property
    def limits(self) -> tuple[int, frozenset[str], int | None]:
        return (self.complexity, self.forbidden_tiers, self.max_frame_ms)


NO_CAPS = Caps(DEFAULT_COMPLEXITY, frozenset(), None, ())


@dataclass(frozen=True, slots=True)
class Limits:
    max_cpu_pct: float = 70.0
    max_temp_c: float = 75.0
    #: at or above max_temp_c + hot_margin_c: straight to level 2
    hot_margin_c: float = 5.0
    #: deadline misses within miss_window_s that count as overload
    miss_count: int = 3
    miss_window_s: float = 10.0
    #: a condition must hold this long (span of consecutive samples) to tighten a level
    tighten_after_s: float = 5.0
    #: all clear this long to relax one level
    relax_after_s: float = 30.0
    #: "clear" (for relaxing) needs CPU this far under max_cpu_pct, so that a level's own
    #: savings do not make it relax into the overload it fixed
    cpu_relax_margin_pct: float = 10.0
    temp_relax_margin_c: float = 3.0
    #: at most this many deadline misses in the window still count as clear
    miss_clear: int = 1

    def __post_init__(self) -> None:
        if not self.max_cpu_pct > 0:
            raise ValueError(f"max_cpu_pct must be above 0, not {self.max_cpu_pct}")
        if not -20.0 <= self.max_temp_c <= 150.0:
            raise ValueError(f"max_temp_c must be within -20..150 °C, not {self.max_temp_c}")
        if self.miss_count < 1 or self.miss_window_s <= 0:
            raise ValueError("miss_count must be >= 1 and miss_window_s > 0")
        if self.tighten_after_s < 0 or self.relax_after_s <= 0:
            raise ValueError("tighten_after_s must be >= 0 and relax_after_s > 0")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _severity(r: Readings, lim: Limits, why: list[str] | None = None) -> int:
    """The level this sample alone calls for (0-2); appends the reasons to ``why``.

    Unknown readings (None, NaN) never count as over.
    """
    level = 0
    cpu, temp = _finite(r.cpu_pct), _finite(r.temp_c)
    if cpu is not None and cpu > lim.max_cpu_pct:
        level = 1
        if why is not None:
            why.append(f"CPU {cpu:.0f}% > {lim.max_cpu_pct:g}%")
    if r.deadline_misses >= lim.miss_count:
        level = 1
        if why is not None:
            why.append(f"{r.deadline_misses} deadline misses in {lim.miss_window_s:g} s")
    if temp is not None:
        hot = lim.max_temp_c + lim.hot_margin_c
        if temp >= hot:
            level = 2
            if why is not None:
                why.append(f"SoC {temp:.1f} °C ≥ {hot:g} °C")
        elif temp > lim.max_temp_c:
            level = max(level, 1)
            if why is not None:
                why.append(f"SoC {temp:.1f} °C > {lim.max_temp_c:g} °C")
    flags = r.throttled
    if flags is not None and flags & NOW_MASK:
        level = 2 if flags & UNDER_VOLTAGE else max(level, 1)
        if why is not None:
            why.append("throttled now: " + ", ".join(decode_throttled(flags & NOW_MASK)))
    return level


def _is_clear(r: Readings, lim: Limits, why: list[str] | None = None) -> bool:
    """Whether a sample counts towards relaxing; appends what blocks it to ``why``.

    Stricter than "not over" by the relax margins. Unknown readings do not block it (a
    reader that stops answering must not hold the caps forever).
    """
    clear = True
    cpu, temp = _finite(r.cpu_pct), _finite(r.temp_c)
    cpu_ok = lim.max_cpu_pct - lim.cpu_relax_margin_pct
    if cpu is not None and cpu > cpu_ok:
        clear = False
        if why is not None:
            why.append(f"CPU {cpu:.0f}% (relaxes ≤ {cpu_ok:g}%)")
    temp_ok = lim.max_temp_c - lim.temp_relax_margin_c
    if temp is not None and temp > temp_ok:
        clear = False
        if why is not None:
            why.append(f"SoC {temp:.1f} °C (relaxes ≤ {temp_ok:g} °C)")
    if r.deadline_misses > lim.miss_clear:
        clear = False
        if why is not None:
            why.append(f"{r.deadline_misses} deadline misses (relaxes ≤ {lim.miss_clear})")
    if r.throttled is not None and r.throttled & NOW_MASK:
        clear = False
        if why is not None:
            why.append("throttled now")
    return clear


def caps_for_level(level: int, reasons: tuple[str, ...] = (), since: float = -math.inf) -> Caps:
    level = min(max(level, 0), MAX_LEVEL)
    return Caps(
        complexity=LEVEL_COMPLEXITY[level],
        forbidden_tiers=LEVEL_FORBIDDEN[level] - {ROBUST_TIER},
        max_frame_ms=None,
        reasons=reasons,
        level=level,
        since=since,
    )


def _span(run: Sequence[Readings]) -> float:
    return run[-1].at - run[0].at if run else -math.inf


def _suffix(samples: Sequence[Readings], keep: Callable[[Readings], bool]) -> list[Readings]:
    i = len(samples)
    while i > 0 and keep(samples[i - 1]):
        i -= 1
    return list(samples[i:])


def decide_caps(readings_history: Sequence[Readings], current_caps: Caps, limits: Limits) -> Caps:
    """The caps after the newest sample in ``readings_history`` (oldest first). Pure.

    * A sample is *over* at level 1 when CPU > max_cpu_pct, deadline misses >= miss_count
      in the window, SoC > max_temp_c, or the firmware reports "throttled", "arm frequency
      capped" or "soft temperature limit" now; at level 2 when SoC >= max_temp_c +
      hot_margin_c or under-voltage now.
    * Only samples after the current level was entered count. Tighten when the newest
      run of over samples spans ``tighten_after_s``: to level 2 if the run is all level-2
      conditions, else one level up (so level 1 that is still over goes to 2 after
      another ``tighten_after_s``).
    * Relax one level when the newest run of *clear* samples spans ``relax_after_s``;
      clear is stricter than not over (CPU under max - margin, SoC under max - margin, at
      most ``miss_clear`` misses, no throttling now), so caps do not flap at a boundary.
    * Level 0: complexity 8; 1: complexity 4; 2: complexity 2 and LEVEL_FORBIDDEN[2].
      The robust tier (extreme) is never forbidden.
    """
    level = min(max(current_caps.level, 0), MAX_LEVEL)
    if not readings_history:
        return caps_for_level(level, current_caps.reasons, current_caps.since)
    newest = readings_history[-1]
    now = newest.at
    recent = [r for r in readings_history if r.at > current_caps.since]
    why_now: list[str] = []
    sev_now = _severity(newest, limits, why_now)

    if level < MAX_LEVEL and recent:
        over = _suffix(recent, lambda r: _severity(r, limits) >= 1)
        target = level
        if _span(over) >= limits.tighten_after_s:
            hot = _suffix(over, lambda r: _severity(r, limits) >= 2)
            target = MAX_LEVEL if _span(hot) >= limits.tighten_after_s else level + 1
        if target > level:
            return caps_for_level(target, tuple(why_now), now)

    if level > 0 and recent:
        clear = _suffix(recent, lambda r: _is_clear(r, limits))
        span = _span(clear)
        if span >= limits.relax_after_s:
            why = (f"clear for {span:.0f} s: relaxed one level",) if level > 1 else ()
            return caps_for_level(level - 1, why, now)
        if sev_now == 0:
            waiting: list[str] = []
            if not _is_clear(newest, limits, waiting):
                why = tuple(f"relax waits: {w}" for w in waiting)
            else:
                why = (
                    f"clear for {max(span, 0.0):.0f} s, relaxes after {limits.relax_after_s:g} s",
                )
            return caps_for_level(level, why, current_caps.since)
    return caps_for_level(level, tuple(why_now), current_caps.since)


# -- the monitor -------------------------------------------------------------------------

#: the audio loop reports a tick that ran later than this past its deadline
LATE_TICK_S = 0.010


@dataclass
class _Failures:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class ResourceMonitor:
    """Samples CPU, temperature, throttling and deadline misses; keeps the current caps.

    The daemon calls :meth:`sample_async` (or :meth:`sample` off the event loop) about once
    a second, applies :meth:`caps` when ``caps().limits`` changed, and shows
    :meth:`status_dict` in ``wzp status``. A reader that raises or returns garbage gives
    None for that sample and is counted, never propagated.
    """

    def __init__(
        self,
        max_cpu_pct: float = 70.0,
        max_temp_c: float = 75.0,
        *,
        cpu_times: Callable[[], float] = read_cpu_times,
        temperature: Callable[[], float | None] = read_temperature_c,
        throttled: Callable[[], int | None] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = replace(limits or Limits(), max_cpu_pct=max_cpu_pct, max_temp_c=max_temp_c)
        self._cpu_times = cpu_times
        self._temperature = temperature
        self._throttled = throttled if throttled is not None else ThrottledReader()
        self._lock = threading.Lock()
        self._misses: deque[float] = deque()
        self.misses_total = 0
        self._last_cpu: tuple[float, float] | None = None
        #: history long enough for the longest run decide_caps looks at
        self._keep_s = self.limits.relax_after_s + self.limits.tighten_after_s + 1.0
        self._history: deque[Readings] = deque(maxlen=4096)
        self._caps = NO_CAPS
        self._failures = _Failures()
        self.changes = 0
        self.last: Readings | None = None

    # -- inputs ---------------------------------------------------------------------------

    def note_deadline_miss(self, now: float) -> None:
        """The audio loop's tick at ``now`` ran late (by more than LATE_TICK_S)."""
        with self._lock:
            self._misses.append(now)
            self.misses_total += 1

    def note_tick(self, lateness_s: float, now: float) -> bool:
        """Convenience for the audio loop: counts a miss when ``lateness_s`` > LATE_TICK_S."""
        if lateness_s > LATE_TICK_S:
            self.note_deadline_miss(now)
            return True
        return False

    def _call(self, name: str, reader: Callable[[], Any]) -> Any:
        try:
            return reader()
        except Exception as exc:  # an edge must never take the daemon down
            self._failures.add(name)
            log.warning("resource reader %s failed: %r", name, exc)
            return None

    def _read_throttled(self) -> int | None:
        value = self._call("throttled", self._throttled)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
            self._failures.add("throttled")
            return None
        return value

    def _read_float(self, name: str, reader: Callable[[], Any]) -> float | None:
        value = self._call(name, reader)
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            self._failures.add(name)
            return None
        if not math.isfinite(value):
            self._failures.add(name)
            return None
        return value

    # -- sampling -------------------------------------------------------------------------

    def sample(self, now: float) -> Readings:
        """Read every source (blocking: vcgencmd may take up to its timeout) and decide."""
        return self._record(now, self._read_throttled())

    async def sample_async(self, now: float) -> Readings:
        """As :meth:`sample`, with the throttling read (subprocess) in a worker thread."""
        flags = await asyncio.to_thread(self._read_throttled)
        return self._record(now, flags)

    def _record(self, now: float, flags: int | None) -> Readings:
        cpu = self._read_float("cpu_times", self._cpu_times)
        cpu_pct = None
        if cpu is not None:
            if self._last_cpu is not None:
                t0, c0 = self._last_cpu
                if now > t0 and cpu >= c0:
                    cpu_pct = (cpu - c0) / (now - t0) * 100.0
            self._last_cpu = (now, cpu)
        temp = self._read_float("temperature", self._temperature)
        cutoff = now - self.limits.miss_window_s
        with self._lock:
            while self._misses and self._misses[0] <= cutoff:
                self._misses.popleft()
            misses = sum(1 for t in self._misses if t <= now)
        r = Readings(now, cpu_pct, temp, flags, misses)
        self.last = r
        while self._history and self._history[0].at < now - self._keep_s:
            self._history.popleft()
        self._history.append(r)
        before = self._caps
        self._caps = decide_caps(self._history, before, self.limits)
        if self._caps.level != before.level:
            self.changes += 1
            self._log_change(before, self._caps)
        return r

    @staticmethod
    def _log_change(before: Caps, after: Caps) -> None:
        forbidden = ", ".join(sorted(after.forbidden_tiers)) or "none"
        why = "; ".join(after.reasons) or "clear"
        if after.level > before.level:
            log.warning(
                "media capped to level %d (Opus complexity %d, forbidden tiers: %s): %s",
                after.level,
                after.complexity,
                forbidden,
                why,
            )
        else:
            log.info(
                "media caps relaxed to level %d (Opus complexity %d, forbidden tiers: %s)",
                after.level,
                after.complexity,
                forbidden,
            )

    # -- outputs --------------------------------------------------------------------------

    def caps(self) -> Caps:
        return self._caps

    @property
    def level(self) -> int:
        return self._caps.level

    def read_failures(self) -> dict[str, int]:
        out = dict(self._failures.counts)
        inner = getattr(self._throttled, "failures", 0)
        if isinstance(inner, int) and inner:
            out["throttled"] = out.get("throttled", 0) + inner
        return out

    def status_dict(self) -> dict[str, Any]:
        """Readings and caps for ``wzp status`` (JSON-ready)."""
        r = self.last
        caps = self._caps
        flags = r.throttled if r is not None else None
        return {
            "cpu_pct": None if r is None or r.cpu_pct is None else round(r.cpu_pct, 1),
            "temp_c": None if r is None or r.temp_c is None else round(r.temp_c, 1),
            "throttled": None if flags is None else f"{flags:#x}",
            "throttled_flags": [] if flags is None else decode_throttled(flags),
            "throttled_source": getattr(self._throttled, "source", None),
            "deadline_misses": 0 if r is None else r.deadline_misses,
            "deadline_misses_total": self.misses_total,
            "level": caps.level,
            "complexity": caps.complexity,
            "forbidden_tiers": sorted(caps.forbidden_tiers),
            "max_frame_ms": caps.max_frame_ms,
            "reasons": list(caps.reasons),
            "max_cpu_pct": self.limits.max_cpu_pct,
            "max_temp_c": self.limits.max_temp_c,
            "level_changes": self.changes,
            "read_failures": self.read_failures(),
        }
