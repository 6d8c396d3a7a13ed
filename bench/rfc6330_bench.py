"""Time the pure-Python RFC 6330 codec against the ``raptorq`` package, per block.

Usage::

    PYTHONPATH=device python bench/rfc6330_bench.py --out bench/results/rfc6330.json

Encode: ours is ``encode_repair`` (repair symbols only, from the raw block); the package is
``Encoder.with_defaults(block, T).get_encoded_packets(R)`` (it cannot produce repairs
alone). Decode: ``lost`` source symbols are dropped (a different random pattern and block
each iteration, from a fixed seed) and every repair symbol is delivered; ours is one
``decode`` call, the package is a fresh ``Decoder.with_defaults`` fed packets until it
returns the block. Times are medians, in microseconds per block, after a warm-up. When
``raptorq`` does not import (e.g. on ARM) only our numbers are reported.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "device"))

from wzp.fec import rfc6330  # noqa: E402

try:
    import raptorq
except ImportError:  # pragma: no cover - depends on the host
    raptorq = None

ENCODE_CASES = [(5, 96, 1), (10, 64, 5), (8, 8, 8)]
# (K, T, R, lost sources): "half the sources lost", capped by what R repairs can restore.
DECODE_CASES = [(5, 96, 1, 1), (10, 64, 5, 5), (8, 8, 8, 4), (10, 96, 5, 5)]
POOL = 64  # distinct blocks / loss patterns cycled through


def _median_us(fn: Callable[[int], object], iterations: int, warmup: int) -> float:
    for i in range(warmup):
        fn(i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(iterations):
        start = clock()
        fn(i)
        samples.append(clock() - start)
    return statistics.median(samples) / 1000.0


def _ratio(ours: float, pkg: float | None) -> float | None:
    return None if pkg is None else round(ours / pkg, 2)


def bench_encode(k: int, t: int, r: int, iterations: int, rng: random.Random) -> dict[str, Any]:
    blocks = [rng.randbytes(k * t) for _ in range(POOL)]
    ours = _median_us(
        lambda i: rfc6330.encode_repair(blocks[i % POOL], k, t, k, r), iterations, 200
    )
    pkg = None
    if raptorq is not None:
        for block in blocks[:8]:  # same symbols as the package
            pk = raptorq.Encoder.with_defaults(block, t).get_encoded_packets(r)
            assert [p[4:] for p in pk[k:]] == rfc6330.encode_repair(block, k, t, k, r)
        pkg = _median_us(
            lambda i: raptorq.Encoder.with_defaults(blocks[i % POOL], t).get_encoded_packets(r),
            iterations,
            200,
        )
    return {
        "k": k,
        "t": t,
        "r": r,
        "ours_us": round(ours, 1),
        "package_us": None if pkg is None else round(pkg, 1),
        "ratio_ours_over_package": _ratio(ours, pkg),
    }


def bench_decode(
    k: int, t: int, r: int, lost: int, iterations: int, rng: random.Random
) -> dict[str, Any]:
    cases = []
    for _ in range(POOL):
        block = rng.randbytes(k * t)
        repairs = rfc6330.encode_repair(block, k, t, k, r)
        missing = set(rng.sample(range(k), lost))
        symbols = {j: block[j * t : (j + 1) * t] for j in range(k) if j not in missing}
        symbols.update({k + i: s for i, s in enumerate(repairs)})
        packets = [bytes([0]) + esi.to_bytes(3, "big") + s for esi, s in symbols.items()]
        cases.append((block, symbols, packets))

    ours_fail = sum(rfc6330.decode(k, t, c[1]) != c[0] for c in cases)
    ours = _median_us(lambda i: rfc6330.decode(k, t, cases[i % POOL][1]), iterations, 200)

    def pkg_decode(i: int) -> bytes | None:
        dec = raptorq.Decoder.with_defaults(k * t, t)
        for packet in cases[i % POOL][2]:
            out = dec.decode(packet)
            if out is not None:
                return out
        return None

    pkg = None
    pkg_fail = None
    if raptorq is not None:
        pkg_fail = sum(pkg_decode(i) != cases[i][0] for i in range(POOL))
        pkg = _median_us(pkg_decode, iterations, 200)
    return {
        "k": k,
        "t": t,
        "r": r,
        "lost_sources": lost,
        "ours_us": round(ours, 1),
        "package_us": None if pkg is None else round(pkg, 1),
        "ratio_ours_over_package": _ratio(ours, pkg),
        "patterns": POOL,
        "ours_failed_patterns": ours_fail,
        "package_failed_patterns": pkg_fail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per case")
    parser.add_argument("--seed", type=int, default=6330)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    encode = [bench_encode(k, t, r, args.iterations, rng) for k, t, r in ENCODE_CASES]
    decode = [bench_decode(*case, args.iterations, rng) for case in DECODE_CASES]
    result = {
        "meta": {
            "python": platform.python_version(),
            "numpy": importlib.metadata.version("numpy"),
            "raptorq": None if raptorq is None else importlib.metadata.version("raptorq"),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "iterations": args.iterations,
            "unit": "microseconds per block (median)",
        },
        "encode": encode,
        "decode": decode,
    }
    for kind, rows in (("encode", encode), ("decode", decode)):
        for row in rows:
            lost = f" lost={row['lost_sources']}" if "lost_sources" in row else ""
            print(
                f"{kind} K={row['k']:>2} T={row['t']:>3} R={row['r']:>2}{lost}: "
                f"ours {row['ours_us']:8.1f} us  package {row['package_us']} us  "
                f"ratio {row['ratio_ours_over_package']}"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
