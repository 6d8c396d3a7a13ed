"""48 kHz <-> 8 kHz resampler: tone response in 20 ms frames, chunking invariance, delay."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.codec.errors import CodecError
from wzp.codec.resample import (
    DELAY_8K,
    DELAY_48K,
    Downsampler,
    Upsampler,
    downsample,
    upsample,
)

FRAME48 = 960  # 20 ms
FRAME8 = 160


def _tone(freq: float, seconds: float = 0.5, amp: float = 10_000.0) -> np.ndarray:
    t = np.arange(int(48_000 * seconds)) / 48_000
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def _gain_db(out: np.ndarray, ref: np.ndarray) -> float:
    r = _rms(out)
    return -200.0 if r == 0 else 20 * np.log10(r / _rms(ref))


def _framewise_down(x: np.ndarray) -> np.ndarray:
    d = Downsampler()
    return np.concatenate([d.process(x[i : i + FRAME48]) for i in range(0, len(x), FRAME48)])


def _framewise_up(x: np.ndarray) -> np.ndarray:
    u = Upsampler()
    return np.concatenate([u.process(x[i : i + FRAME8]) for i in range(0, len(x), FRAME8)])


# Measured (this filter): 300/1000/3000 Hz 0.00 dB both ways; 3400 Hz -0.15 dB down,
# -0.29 dB round trip; 4500 Hz -70 dB; 6000 Hz below one LSB; 10000 Hz -107 dB.
@pytest.mark.parametrize("freq", [300, 1000, 3000, 3400])
def test_passband_within_1_db(freq: float) -> None:
    x = _tone(freq)
    low = _framewise_down(x)
    back = _framewise_up(low)
    settle8, settle48 = 2 * DELAY_8K, 4 * DELAY_48K  # skip the filters' start-up
    assert len(low) == len(x) // 6
    assert len(back) == len(x)
    assert abs(_gain_db(low[settle8:], x)) < 1.0
    assert abs(_gain_db(back[settle48:], x)) < 1.0


@pytest.mark.parametrize("freq", [4500, 6000, 10_000])
def test_stopband_at_least_40_db(freq: float) -> None:
    x = _tone(freq)
    low = _framewise_down(x)
    back = _framewise_up(low)
    assert _gain_db(low[2 * DELAY_8K :], x) <= -40.0
    assert _gain_db(back[4 * DELAY_48K :], x) <= -40.0


def test_framewise_equals_whole_signal() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(-30_000, 30_000, 48_000, dtype=np.int16)
    assert np.array_equal(_framewise_down(x), downsample(x))
    y = rng.integers(-30_000, 30_000, 8_000, dtype=np.int16)
    assert np.array_equal(_framewise_up(y), upsample(y))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=12))
def test_any_chunking_equals_whole_signal(cuts: list[int]) -> None:
    rng = np.random.default_rng(len(cuts))
    x = rng.integers(-30_000, 30_000, sum(cuts) + 37, dtype=np.int16)
    d = Downsampler()
    parts, pos = [], 0
    for n in [*cuts, len(x) - sum(cuts)]:
        parts.append(d.process(x[pos : pos + n]))
        pos += n
    chunked = np.concatenate(parts).astype(np.int32)
    whole = downsample(x).astype(np.int32)
    assert len(chunked) == len(whole)
    assert np.abs(chunked - whole).max(initial=0) <= 1
    y = x[: len(x) // 6]
    u = Upsampler()
    parts, pos = [], 0
    for n in cuts:
        parts.append(u.process(y[pos : pos + n]))
        pos += n
    parts.append(u.process(y[pos:]))
    assert np.abs(np.concatenate(parts).astype(np.int32) - upsample(y)).max(initial=0) <= 1


def test_group_delay() -> None:
    """An impulse comes out DELAY_48K later (both directions), DELAY_8K at 8 kHz."""
    x = np.zeros(4800, dtype=np.int16)
    x[1200] = 30_000
    low = downsample(x)
    assert int(np.argmax(low)) == 1200 // 6 + DELAY_8K
    y = np.zeros(800, dtype=np.int16)
    y[200] = 30_000
    assert int(np.argmax(upsample(y))) == 200 * 6 + DELAY_48K
    assert DELAY_48K == 96 and DELAY_8K == 16


def test_prime_avoids_start_from_silence() -> None:
    x = _tone(1000, 0.1)
    whole = downsample(x)
    d = Downsampler()
    d.prime(x[:960])
    assert np.array_equal(d.process(x[960:]), whole[160:])


def test_rejects_non_int16_or_stereo() -> None:
    with pytest.raises(CodecError):
        Downsampler().process(np.zeros(960, dtype=np.float32))
    with pytest.raises(CodecError):
        Upsampler().process(np.zeros((160, 2), dtype=np.int16))
