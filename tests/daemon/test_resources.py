from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.daemon.resources import (
    LEVEL_COMPLEXITY,
    LEVEL_FORBIDDEN,
    NO_CAPS,
    ROBUST_TIER,
    Caps,
    Limits,
    Readings,
    ResourceMonitor,
    ThrottledReader,
    decide_caps,
    decode_throttled,
    parse_throttled,
    read_cpu_times,
    read_temperature_c,
)
from wzp.media.codecs import DEFAULT_COMPLEXITY
from wzp.media.ladder import LADDER
from wzp.media.quality import QualityController

LIM = Limits()


# -- throttling flags --------------------------------------------------------------------


def test_decode_throttled_documented_bits() -> None:
    assert decode_throttled(0x0) == []
    assert decode_throttled(0x50005) == [
        "under-voltage",
        "throttled",
        "under-voltage has occurred",
        "throttling has occurred",
    ]
    assert decode_throttled(0x80008) == [
        "soft temperature limit",
        "soft temperature limit has occurred",
    ]
    assert decode_throttled(0x20002) == [
        "arm frequency capped",
        "arm frequency capping has occurred",
    ]
    assert decode_throttled(0x100) == ["bit 8"]  # undocumented bits are shown, not hidden
    with pytest.raises(ValueError):
        decode_throttled(-1)


def test_parse_throttled_both_formats() -> None:
    assert parse_throttled("throttled=0x50005\n", vcgencmd=True) == 0x50005
    assert parse_throttled("throttled=0x0", vcgencmd=True) == 0
    assert parse_throttled("50005\n", vcgencmd=False) == 0x50005  # sysfs: "%x\n"
    assert parse_throttled("0\n", vcgencmd=False) == 0
    for bad in ("", "throttled=", "throttled=0xZZ", "VCHI initialization failed", "0x50005"):
        with pytest.raises(ValueError):
            parse_throttled(bad, vcgencmd=True)
    for bad in ("", "zz", "123456789", "throttled=0x1"):
        with pytest.raises(ValueError):
            parse_throttled(bad, vcgencmd=False)
    with pytest.raises(ValueError, match="32 bits"):
        parse_throttled("throttled=0x100000000", vcgencmd=True)


@given(st.integers(0, 0xFFFF_FFFF))
def test_parse_throttled_round_trip(value: int) -> None:
    assert parse_throttled(f"throttled={value:#x}\n", vcgencmd=True) == value
    assert parse_throttled(f"{value:x}\n", vcgencmd=False) == value


@given(st.text(max_size=40), st.booleans())
def test_parse_throttled_garbage_only_value_error(text: str, vc: bool) -> None:
    try:
        value = parse_throttled(text, vcgencmd=vc)
    except ValueError:
        return
    assert 0 <= value <= 0xFFFF_FFFF


def _completed(stdout: str = "", rc: int = 0, stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["vcgencmd"], rc, stdout, stderr)


def test_throttled_reader_prefers_sysfs(tmp_path: Path) -> None:
    f = tmp_path / "get_throttled"
    f.write_text("50005\n")

    def run(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("vcgencmd must not run when sysfs answers")

    reader = ThrottledReader(f, run=run, which=lambda _: "/usr/bin/vcgencmd")
    assert reader() == 0x50005
    assert reader.source == "sysfs"
    assert reader.failures == 0


def test_throttled_reader_absent_everywhere_is_none_not_failure(tmp_path: Path) -> None:
    reader = ThrottledReader(tmp_path / "nope", vcgencmd="wzp-no-such-vcgencmd-here")
    assert reader() is None
    assert reader() is None
    assert reader.failures == 0
    assert reader.source is None


def test_throttled_reader_vcgencmd_fallback_and_garbage(tmp_path: Path) -> None:
    outputs = iter(["throttled=0x50005\n", "garbage\n", "throttled=0x0\n"])
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        assert kw["timeout"] == 1.0
        return _completed(next(outputs))

    reader = ThrottledReader(tmp_path / "nope", run=run, which=lambda _: "/opt/vc/vcgencmd")
    assert reader() == 0x50005
    assert reader.source == "vcgencmd"
    assert calls[0] == ["/opt/vc/vcgencmd", "get_throttled"]
    assert reader() is None
    assert reader.failures == 1
    assert "unexpected vcgencmd output" in (reader.last_error or "")
    assert reader() == 0


def test_throttled_reader_sysfs_garbage_falls_back(tmp_path: Path) -> None:
    f = tmp_path / "get_throttled"
    f.write_text("not hex\n")
    reader = ThrottledReader(
        f, run=lambda *a, **k: _completed("throttled=0x2\n"), which=lambda _: "/x/vcgencmd"
    )
    assert reader() == 0x2
    assert reader.failures == 1


def test_throttled_reader_errors_counted_then_gives_up(tmp_path: Path) -> None:
    calls = 0

    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise subprocess.TimeoutExpired(argv, 1.0)
        if calls == 2:
            raise PermissionError(13, "Permission denied")
        return _completed("", rc=255, stderr="VCHI initialization failed\n")

    reader = ThrottledReader(tmp_path / "nope", run=run, which=lambda _: "/x/vcgencmd")
    for _ in range(8):
        assert reader() is None
    assert calls == 5  # give_up_after=5 consecutive failures: no more forks
    assert reader.failures == 5
    assert "VCHI initialization failed" in (reader.last_error or "")


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-vcgencmd"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return path


def test_throttled_reader_real_subprocess_garbage_and_timeout(tmp_path: Path) -> None:
    garbage = _script(tmp_path, "print('error=1 error_msg=\"Command not registered\"')")
    reader = ThrottledReader(tmp_path / "nope", which=lambda _: str(garbage))
    assert reader() is None
    assert reader.failures == 1

    slow = _script(tmp_path, "import time; time.sleep(5)")
    reader = ThrottledReader(tmp_path / "nope", which=lambda _: str(slow), timeout_s=0.2)
    assert reader() is None
    assert reader.failures == 1
    assert "took over 0.2 s" in (reader.last_error or "")

    good = _script(tmp_path, "print('throttled=0x50000')")
    reader = ThrottledReader(tmp_path / "nope", which=lambda _: str(good))
    assert reader() == 0x50000


# -- temperature and CPU -----------------------------------------------------------------


def _zone(base: Path, n: int, kind: str | None, temp: str | None) -> None:
    z = base / f"thermal_zone{n}"
    z.mkdir(parents=True)
    if kind is not None:
        (z / "type").write_text(kind + "\n")
    if temp is not None:
        (z / "temp").write_text(temp + "\n")


def test_temperature_prefers_soc_zone(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "acpitz", "40000")
    _zone(tmp_path, 1, "cpu-thermal", "61234")
    (tmp_path / "cooling_device0").mkdir()
    assert read_temperature_c(tmp_path) == pytest.approx(61.234)


def test_temperature_falls_back_to_zone0(tmp_path: Path) -> None:
    _zone(tmp_path, 10, "x86_pkg_temp", "90000")
    _zone(tmp_path, 2, "iwlwifi_1", "30000")
    _zone(tmp_path, 0, "acpitz", "47500")
    assert read_temperature_c(tmp_path) == pytest.approx(47.5)
    # zone0 absent: the lowest-numbered zone (numeric order: 2 before 10)
    other = tmp_path / "other"
    _zone(other, 10, "a", "90000")
    _zone(other, 2, "b", "30000")
    assert read_temperature_c(other) == pytest.approx(30.0)


def test_temperature_absent_or_garbage(tmp_path: Path) -> None:
    assert read_temperature_c(tmp_path / "missing") is None
    assert read_temperature_c(tmp_path) is None  # no zones
    _zone(tmp_path / "a", 0, "cpu-thermal", "hot")
    assert read_temperature_c(tmp_path / "a") is None
    _zone(tmp_path / "b", 0, "cpu-thermal", None)
    assert read_temperature_c(tmp_path / "b") is None
    _zone(tmp_path / "c", 0, "cpu-thermal", "-273150")  # a zone reporting nonsense
    assert read_temperature_c(tmp_path / "c") is None
    _zone(tmp_path / "d", 0, None, "55000")  # no type file: still zone0
    assert read_temperature_c(tmp_path / "d") == pytest.approx(55.0)


def test_read_cpu_times_counts_this_process() -> None:
    before = read_cpu_times()
    x = 0
    for i in range(300_000):
        x += i * i
    after = read_cpu_times()
    assert x > 0
    assert 0.0 <= before <= after
    assert after == pytest.approx(sum(os.times()[:2]), abs=0.05)


class FakeCpu:
    def __init__(self, values: Iterable[float]) -> None:
        self.values = iter(values)

    def __call__(self) -> float:
        return next(self.values)


def test_cpu_share_from_fake_cpu_times() -> None:
    mon = ResourceMonitor(
        cpu_times=FakeCpu([10.0, 10.5, 11.5, 11.5, 11.0, 12.0]),
        temperature=lambda: None,
        throttled=lambda: None,
    )
    got = [mon.sample(t).cpu_pct for t in (0.0, 1.0, 2.0, 4.0, 5.0, 5.0)]
    assert got[0] is None  # no interval yet
    assert got[1] == pytest.approx(50.0)
    assert got[2] == pytest.approx(100.0)
    assert got[3] == pytest.approx(0.0)
    assert got[4] is None  # CPU time went backwards: no share, new baseline
    assert got[5] is None  # no time passed


# -- policy ------------------------------------------------------------------------------


def R(at: float, cpu: float | None = 20.0, temp: float | None = 50.0, flags: int | None = 0,
      misses: int = 0) -> Readings:  # fmt: skip
    return Readings(at, cpu, temp, flags, misses)


def drive(samples: Iterable[Readings], caps: Caps = NO_CAPS) -> list[Caps]:
    history: list[Readings] = []
    out = []
    for r in samples:
        history.append(r)
        caps = decide_caps(history, caps, LIM)
        out.append(caps)
    return out


def levels_at(samples: list[Readings], caps: list[Caps]) -> dict[float, int]:
    return {r.at: c.level for r, c in zip(samples, caps, strict=True)}


def test_level_table() -> None:
    assert LEVEL_COMPLEXITY == (DEFAULT_COMPLEXITY, 4, 2)
    names = {t.name for t in LADDER}
    assert ROBUST_TIER == "extreme"
    for forbidden in LEVEL_FORBIDDEN:
        assert forbidden <= names
        assert ROBUST_TIER not in forbidden
    assert LEVEL_FORBIDDEN[2] == {"dense", "severe", "deep"}
    assert NO_CAPS.complexity == 8
    assert NO_CAPS.forbidden_tiers == frozenset()
    assert NO_CAPS.max_frame_ms is None


def test_cpu_over_tightens_after_5s_then_again_then_relaxes_a_step_per_30s() -> None:
    samples = [R(t, cpu=85.0) for t in range(0, 12)]
    samples += [R(t, cpu=30.0) for t in range(12, 80)]
    caps = drive(samples)
    lv = levels_at(samples, caps)
    assert [lv[t] for t in range(0, 5)] == [0] * 5
    assert lv[5] == 1  # the condition held for 5 s of samples (t = 0..5)
    assert caps[5].complexity == 4
    assert caps[5].forbidden_tiers == frozenset()
    assert caps[5].reasons == ("CPU 85% > 70%",)
    assert [lv[t] for t in range(6, 11)] == [1] * 5  # counts again from the change
    assert lv[11] == 2
    assert caps[11].complexity == 2
    assert caps[11].forbidden_tiers == {"dense", "severe", "deep"}
    # clear from t = 12: one step down after 30 s clear, the next after 30 s more
    assert [lv[t] for t in range(12, 42)] == [2] * 30
    assert caps[20].reasons == ("clear for 8 s, relaxes after 30 s",)
    assert lv[42] == 1
    assert [lv[t] for t in range(43, 73)] == [1] * 30
    assert lv[73] == 0
    assert caps[73] == Caps(8, frozenset(), None, (), 0, 73)
    assert caps[79].level == 0


def test_near_limit_holds_caps_instead_of_flapping() -> None:
    # capped, CPU settles at 65 %: not over (70) but not clear (60) -> stays at level 1
    samples = [R(t, cpu=85.0) for t in range(0, 6)] + [R(t, cpu=65.0) for t in range(6, 100)]
    caps = drive(samples)
    assert caps[5].level == 1
    assert all(c.level == 1 for c in caps[6:])
    assert caps[-1].reasons == ("relax waits: CPU 65% (relaxes ≤ 60%)",)


def test_intermittent_overload_does_not_tighten_and_one_blip_restarts_relax() -> None:
    # over 4 s, fine 1 s, repeated: never 5 s in a row
    samples = [R(t, cpu=90.0 if t % 5 else 20.0) for t in range(0, 60)]
    assert all(c.level == 0 for c in drive(samples))
    # at level 1, a single over sample at t=20 restarts the 30 s clear count
    start = Caps(4, frozenset(), None, (), 1, 0.0)
    samples = [R(t, cpu=90.0 if t == 20 else 20.0) for t in range(1, 60)]
    caps = drive(samples, start)
    lv = levels_at(samples, caps)
    assert lv[50] == 1
    assert lv[51] == 0  # 30 s after the first clear sample following the blip (t = 21)


def test_temperature_levels() -> None:
    warm = [R(t, temp=76.0) for t in range(0, 8)]
    caps = drive(warm)
    assert caps[5].level == 1
    assert caps[5].reasons == ("SoC 76.0 °C > 75 °C",)
    hot = [R(t, temp=81.0) for t in range(0, 8)]
    caps = drive(hot)
    assert caps[4].level == 0
    assert caps[5].level == 2  # max + 5 held: straight to level 2
    assert caps[5].reasons == ("SoC 81.0 °C ≥ 80 °C",)
    # cooling to 73 °C is not clear yet (relax needs <= 72 °C)
    cooling = hot + [R(t, temp=73.0) for t in range(8, 60)]
    assert drive(cooling)[-1].level == 2


def test_throttling_flags_levels() -> None:
    # under-voltage now (0x50005): level 2 after 5 s
    caps = drive([R(t, flags=0x50005) for t in range(0, 6)])
    assert caps[-1].level == 2
    assert caps[-1].reasons == ("throttled now: under-voltage, throttled",)
    # arm frequency capped now: level 1
    caps = drive([R(t, flags=0x20002) for t in range(0, 6)])
    assert caps[-1].level == 1
    assert caps[-1].reasons == ("throttled now: arm frequency capped",)
    # only "has occurred" bits: no caps, no reasons
    caps = drive([R(t, flags=0x50000) for t in range(0, 40)])
    assert all(c.level == 0 and c.reasons == () for c in caps)


def test_deadline_misses_level() -> None:
    caps = drive([R(t, misses=3) for t in range(0, 6)])
    assert caps[-1].level == 1
    assert caps[-1].reasons == ("3 deadline misses in 10 s",)
    assert all(c.level == 0 for c in drive([R(t, misses=2) for t in range(0, 30)]))


def test_several_reasons_and_unknown_readings() -> None:
    caps = drive([R(t, cpu=99.0, temp=78.25, flags=0x4, misses=5) for t in range(0, 6)])
    assert caps[-1].reasons == (
        "CPU 99% > 70%",
        "5 deadline misses in 10 s",
        "SoC 78.2 °C > 75 °C",
        "throttled now: throttled",
    )
    # nothing known (a laptop without sensors, first sample): no caps
    assert all(c.level == 0 for c in drive([R(t, None, None, None) for t in range(0, 40)]))
    # NaN readings are unknown, like None: never over, and they do not hold caps forever
    caps = drive(
        [R(t, cpu=math.nan, temp=math.nan) for t in range(1, 40)], Caps(4, frozenset(), None, (), 1)
    )
    assert [c.level for c in caps].index(0) == 30  # t = 31: 30 s after the first sample


def test_decide_caps_edge_inputs() -> None:
    assert decide_caps([], NO_CAPS, LIM) == NO_CAPS
    bogus = Caps(0, frozenset({"extreme", "clear"}), 20, ("x",), level=9)
    out = decide_caps([R(0.0)], bogus, LIM)
    assert out.level == 2
    assert out.forbidden_tiers == {"dense", "severe", "deep"}
    assert out.max_frame_ms is None


@st.composite
def reading_sequences(draw: st.DrawFn) -> list[Readings]:
    n = draw(st.integers(1, 60))
    t = 0.0
    out = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 3.0, 12.0, 40.0]))
        cpu = draw(st.one_of(st.none(), st.floats(0, 400), st.just(math.nan)))
        temp = draw(st.one_of(st.none(), st.floats(-20, 120)))
        flags = draw(
            st.one_of(st.none(), st.integers(0, 0xFFFF_FFFF), st.sampled_from([0x50005, 2, 8]))
        )
        misses = draw(st.integers(0, 20))
        out.append(Readings(t, cpu, temp, flags, misses))
    return out


@settings(max_examples=150, deadline=None)
@given(reading_sequences())
def test_caps_invariants_over_random_readings(samples: list[Readings]) -> None:
    caps = drive(samples)
    controller = QualityController()
    prev = NO_CAPS
    last_change = -math.inf
    for r, c in zip(samples, caps, strict=True):
        assert ROBUST_TIER not in c.forbidden_tiers
        assert 0 <= c.complexity <= 10
        assert c.level in (0, 1, 2)
        assert c.complexity == LEVEL_COMPLEXITY[c.level]
        if c.level != prev.level:
            assert c.level >= prev.level - 1  # relax one step at a time
            assert r.at - last_change >= LIM.tighten_after_s  # no flapping
            if c.level < prev.level:
                assert r.at - last_change >= LIM.relax_after_s
            last_change = r.at
        prev = c
        # the controller accepts every caps the policy can produce
        controller.forbid(set(c.forbidden_tiers))


# -- the monitor -------------------------------------------------------------------------


class Box:
    def __init__(self, value: object) -> None:
        self.value = value

    def __call__(self) -> object:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class BusyCpu:
    """Fake cpu_times: ``pct`` % of a core since the last call, on the test's clock."""

    def __init__(self) -> None:
        self.pct = 10.0
        self.total = 0.0
        self.at = 0.0

    def advance(self, now: float) -> None:
        self.total += self.pct / 100.0 * (now - self.at)
        self.at = now

    def __call__(self) -> float:
        return self.total


def test_monitor_drives_levels_up_and_down() -> None:
    cpu = BusyCpu()
    temp = Box(50.0)
    flags = Box(0)
    mon = ResourceMonitor(cpu_times=cpu, temperature=temp, throttled=flags)

    def step(t: float) -> Readings:
        cpu.advance(t)
        return mon.sample(t)

    for t in range(0, 3):
        step(t)
    assert mon.caps() == NO_CAPS
    cpu.pct = 90.0
    for t in range(3, 9):
        r = step(t)
    assert r.cpu_pct == pytest.approx(90.0)
    assert mon.level == 1
    assert mon.caps().complexity == 4
    temp.value = 82.0
    for t in range(9, 15):
        step(t)
    assert mon.level == 2
    assert mon.caps().forbidden_tiers == {"dense", "severe", "deep"}
    assert mon.changes == 2
    status = mon.status_dict()
    assert status["level"] == 2
    assert status["complexity"] == 2
    assert status["forbidden_tiers"] == ["deep", "dense", "severe"]
    assert status["reasons"] == ["CPU 90% > 70%", "SoC 82.0 °C ≥ 80 °C"]
    cpu.pct, temp.value = 20.0, 60.0
    for t in range(15, 45):  # clear from t = 15
        step(t)
    assert mon.level == 2
    step(45)
    assert mon.level == 1
    for t in range(46, 76):
        step(t)
    assert mon.level == 1
    step(76)
    assert mon.level == 0
    assert mon.changes == 4


def test_monitor_deadline_miss_window() -> None:
    mon = ResourceMonitor(cpu_times=lambda: 0.0, temperature=lambda: None, throttled=lambda: None)
    mon.note_deadline_miss(1.0)
    mon.note_deadline_miss(2.0)
    assert mon.note_tick(0.015, 3.0)
    assert not mon.note_tick(0.004, 3.5)
    assert mon.sample(4.0).deadline_misses == 3
    assert mon.sample(11.5).deadline_misses == 2  # the miss at 1.0 left the 10 s window
    assert mon.sample(20.0).deadline_misses == 0
    assert mon.misses_total == 3
    for t in range(21, 27):
        for k in range(3):
            mon.note_deadline_miss(t + k * 0.02)
        mon.sample(t + 0.5)
    assert mon.level == 1
    assert mon.caps().reasons[0].endswith("deadline misses in 10 s")


def test_monitor_reader_failures_counted_never_raised() -> None:
    mon = ResourceMonitor(
        cpu_times=Box(OSError("no /proc")),
        temperature=Box("warm"),
        throttled=Box(-5),
    )
    r = mon.sample(0.0)
    assert (r.cpu_pct, r.temp_c, r.throttled) == (None, None, None)
    mon2 = ResourceMonitor(cpu_times=Box(math.inf), temperature=Box(math.nan), throttled=Box(1.5))
    mon2.sample(0.0)
    assert mon.read_failures() == {"cpu_times": 1, "temperature": 1, "throttled": 1}
    assert mon2.read_failures() == {"cpu_times": 1, "temperature": 1, "throttled": 1}
    assert mon.caps() == NO_CAPS


def test_monitor_status_dict_json_ready(tmp_path: Path) -> None:
    mon = ResourceMonitor(cpu_times=Box(1.0), temperature=Box(48.04), throttled=Box(0x50005))
    empty = mon.status_dict()
    assert empty["cpu_pct"] is None and empty["throttled"] is None
    mon.sample(0.0)
    status = mon.status_dict()
    json.dumps(status)
    assert status["throttled"] == "0x50005"
    assert status["throttled_flags"] == [
        "under-voltage",
        "throttled",
        "under-voltage has occurred",
        "throttling has occurred",
    ]
    assert status["temp_c"] == 48.0
    assert status["throttled_source"] is None  # an injected plain function has none
    assert status["deadline_misses"] == 0
    assert status["level"] == 0 and status["complexity"] == 8
    assert status["forbidden_tiers"] == []
    assert status["reasons"] == ["throttled now: under-voltage, throttled"]
    # a counting reader's own failures show up too
    f = tmp_path / "get_throttled"
    f.write_text("junk")
    reader = ThrottledReader(f, vcgencmd="wzp-no-such-vcgencmd-here")
    mon = ResourceMonitor(cpu_times=Box(1.0), temperature=Box(None), throttled=reader)
    mon.sample(0.0)
    assert mon.status_dict()["read_failures"] == {"throttled": 1}


def test_monitor_limits_from_config() -> None:
    mon = ResourceMonitor(50.0, 60.0, limits=Limits(tighten_after_s=2.0))
    assert (mon.limits.max_cpu_pct, mon.limits.max_temp_c, mon.limits.tighten_after_s) == (
        50.0,
        60.0,
        2.0,
    )
    with pytest.raises(ValueError, match="max_cpu_pct"):
        ResourceMonitor(0.0)
    with pytest.raises(ValueError, match="max_temp_c"):
        ResourceMonitor(70.0, 500.0)


async def test_sample_async_reads_throttling_off_the_loop() -> None:
    import threading

    main = threading.get_ident()
    seen: list[int] = []

    def throttled() -> int:
        seen.append(threading.get_ident())
        return 0x2

    mon = ResourceMonitor(cpu_times=Box(0.0), temperature=Box(None), throttled=throttled)
    r = await mon.sample_async(0.0)
    assert r.throttled == 0x2
    assert seen and seen[0] != main


def test_monitor_with_real_readers_never_fails() -> None:
    mon = ResourceMonitor()
    mon.sample(0.0)
    r = mon.sample(0.5)
    assert r.cpu_pct is None or r.cpu_pct >= 0.0
    assert r.temp_c is None or -60.0 <= r.temp_c <= 200.0
    json.dumps(mon.status_dict())
