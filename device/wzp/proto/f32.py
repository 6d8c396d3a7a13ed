"""IEEE-754 binary32 arithmetic where SPEC.md demands it (ratio, repair count, loss)."""

from __future__ import annotations

import math

import numpy as np

_F32 = np.float32


def f32(x: float) -> float:
    """Round ``x`` to the nearest binary32 value (returned as a Python float)."""
    return float(_F32(x))


def encode_ratio(ratio: float) -> int:
    """SPEC 1.1: ``e = min(127, floor(f32(ratio) * f32(63.5) + 0.5))``; negative or NaN -> 0."""
    r = _F32(ratio)
    if not math.isfinite(float(r)):
        return 0 if math.isnan(float(r)) else (127 if r > 0 else 0)
    if r <= 0:
        return 0
    product = r * _F32(63.5)  # f32 product
    return min(127, math.floor(float(product) + 0.5))


def decode_ratio(e: int) -> float:
    """SPEC 1.1: ``ratio = f32(e) / 63.5`` computed in f32."""
    return float(_F32(e & 0x7F) / _F32(63.5))


def repair_count(k: int, ratio: float) -> int:
    """SPEC 2: ``R = ceil(f32(K) * f32(ratio))``; a negative or NaN ratio gives 0."""
    r = _F32(ratio)
    if math.isnan(float(r)) or r <= 0 or k <= 0:
        return 0
    return math.ceil(float(_F32(k) * r))


def shortest_f32_repr(x: float) -> str:
    """Shortest decimal that reads back as the same binary32, always with a decimal point."""
    s = np.format_float_positional(_F32(x), unique=True, trim="0")
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    return s
