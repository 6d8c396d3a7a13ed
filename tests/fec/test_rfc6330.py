"""Cross-checks of the pure-Python RFC 6330 codec against the ``raptorq`` package.

Run with ``pytest -s`` to see the trial counts and rates that are printed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.fec import rfc6330

raptorq = pytest.importorskip("raptorq")

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "fec.json"


# --------------------------------------------------------------------------------------
# helpers around the reference package
# --------------------------------------------------------------------------------------


class PackagePanic(Exception):
    """The Rust package raised (a pyo3 PanicException derives from BaseException)."""


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise PackagePanic(repr(exc)) from exc


def pkg_packets(block: bytes, t: int, repairs: int) -> list[bytes]:
    """K source packets then ``repairs`` repair packets (4-byte payload id + symbol)."""
    enc = raptorq.Encoder.with_defaults(block, t)
    return list(enc.get_encoded_packets(repairs))


def packet_esi(packet: bytes) -> int:
    assert packet[0] == 0, "single source block expected"
    return int.from_bytes(packet[1:4], "big")


def pkg_decode(k: int, t: int, packets: Iterable[bytes]) -> bytes | None:
    """Feed packets to a fresh package decoder; the block once decodable, else None."""
    dec = raptorq.Decoder.with_defaults(k * t, t)
    out = None
    for packet in packets:
        res = _guard(lambda p=packet: dec.decode(p))
        if res is not None:
            out = bytes(res)
            break
    return out


def split(block: bytes, k: int, t: int) -> list[bytes]:
    return [block[i * t : (i + 1) * t] for i in range(k)]


def random_t(rng: random.Random, hi: int = 512) -> int:
    return 8 * rng.randint(1, hi // 8)


# --------------------------------------------------------------------------------------
# encoder cross-check
# --------------------------------------------------------------------------------------


def _encode_trials(rng: random.Random, trials: int, k_hi: int, t_hi: int) -> int:
    symbols = 0
    for _ in range(trials):
        k = rng.randint(1, k_hi)
        t = random_t(rng, t_hi)
        r = rng.randint(0, 2 * k)
        block = rng.randbytes(k * t)
        packets = pkg_packets(block, t, r)
        assert len(packets) == k + r
        assert [packet_esi(p) for p in packets] == list(range(k + r))
        assert [p[4:] for p in packets[:k]] == split(block, k, t)
        ours = rfc6330.encode_repair(block, k, t, k, r)
        theirs = [p[4:] for p in packets[k:]]
        assert ours == theirs, f"repair mismatch k={k} t={t} r={r}"
        if r > 2:
            # an arbitrary window of ESIs gives the same symbols
            first = rng.randint(k, k + r - 1)
            count = rng.randint(0, k + r - first)
            assert (
                rfc6330.encode_repair(block, k, t, first, count)
                == theirs[first - k : first - k + count]
            )
        symbols += r
    return symbols


def test_encode_matches_package() -> None:
    rng = random.Random(0x6330)
    start = time.perf_counter()
    small = 3000
    n_small = _encode_trials(rng, small, k_hi=60, t_hi=512)
    large = 40
    n_large = _encode_trials(rng, large, k_hi=255, t_hi=128)
    print(
        f"\n[encode] {small} blocks K<=60 ({n_small} repair symbols) + {large} blocks K<=255 "
        f"({n_large} repair symbols): 100% identical, {time.perf_counter() - start:.1f}s"
    )


def test_encode_every_k_and_long_esi_runs() -> None:
    rng = random.Random(7)
    for k in range(1, 256):
        t = 8
        block = rng.randbytes(k * t)
        r = 3 if k > 60 else 12
        theirs = [p[4:] for p in pkg_packets(block, t, r)[k:]]
        assert rfc6330.encode_repair(block, k, t, k, r) == theirs, k
    # long ESI runs exercise every entry of the V0..V3 tables many times
    for k in (1, 10, 26, 55):
        block = rng.randbytes(k * 8)
        theirs = [p[4:] for p in pkg_packets(block, 8, 5000)[k:]]
        assert rfc6330.encode_repair(block, k, 8, k, 5000) == theirs, k
    print("\n[encode] every K in 1..255 and 4 x 5000-ESI runs: identical")


def test_high_esis_are_accepted_by_package_decoder() -> None:
    """Repair symbols at ESIs the package cannot be asked for directly still decode there."""
    rng = random.Random(11)
    for k in (1, 5, 13, 60, 200):
        t = 16
        block = rng.randbytes(k * t)
        for esi in (rfc6330.MAX_ESI, rfc6330.MAX_ESI - 1, (1 << 23) + 12345, 70000, 1 << 16):
            sym = rfc6330.encode_repair(block, k, t, esi, 1)[0]
            lost = rng.randrange(k)
            packets = [
                bytes([0]) + i.to_bytes(3, "big") + s for i, s in enumerate(split(block, k, t))
            ]
            del packets[lost]
            packets.append(bytes([0]) + esi.to_bytes(3, "big") + sym)
            assert pkg_decode(k, t, packets) == block, (k, esi)
            received = {packet_esi(p): p[4:] for p in packets}
            assert rfc6330.decode(k, t, received) == block


# --------------------------------------------------------------------------------------
# decoder cross-check
# --------------------------------------------------------------------------------------


def _decode_trials(
    rng: random.Random, trials: int, k_hi: int, t_hi: int, stats: dict[str, int]
) -> None:
    for _ in range(trials):
        k = rng.randint(1, k_hi)
        t = random_t(rng, t_hi)
        r = rng.randint(1, 2 * k)
        block = rng.randbytes(k * t)
        packets = pkg_packets(block, t, r)
        # mostly exactly K received symbols (where rank deficiency shows), else K + 1 .. K + r
        extra = 0 if rng.random() < 0.7 else rng.randint(1, r)
        chosen = rng.sample(packets, k + extra)
        rng.shuffle(chosen)
        theirs = pkg_decode(k, t, chosen)
        ours = rfc6330.decode(k, t, {packet_esi(p): p[4:] for p in chosen})
        stats["trials"] += 1
        stats["exactly_k"] += extra == 0
        if theirs is not None:
            assert theirs == block
            assert ours == theirs, f"package decodes, we do not: k={k} t={t} r={r}"
            stats["both_decode"] += 1
        elif ours is None:
            stats["both_fail"] += 1
        else:
            assert ours == block
            stats["only_ours"] += 1


def test_decode_matches_package() -> None:
    rng = random.Random(0xDEC0DE)
    stats = {"trials": 0, "exactly_k": 0, "both_decode": 0, "both_fail": 0, "only_ours": 0}
    start = time.perf_counter()
    _decode_trials(rng, 5000, k_hi=60, t_hi=512, stats=stats)
    _decode_trials(rng, 40, k_hi=255, t_hi=64, stats=stats)
    n = stats["trials"]
    print(
        f"\n[decode] {n} trials ({stats['exactly_k']} with exactly K symbols): "
        f"both decode {stats['both_decode']} ({100 * stats['both_decode'] / n:.2f}%), "
        f"both fail {stats['both_fail']}, only ours decodes {stats['only_ours']}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    assert stats["both_decode"] + stats["both_fail"] + stats["only_ours"] == n
    assert stats["both_decode"] > 0.97 * n


def test_decode_rank_deficient_sets_agree() -> None:
    """Small K, exactly K symbols, mostly repairs: failures are frequent enough to compare."""
    rng = random.Random(99)
    fails = both = 0
    trials = 1500
    for _ in range(trials):
        k = rng.randint(1, 4)
        t = 8
        block = rng.randbytes(k * t)
        packets = pkg_packets(block, t, 3 * k)
        chosen = rng.sample(packets, k)
        theirs = pkg_decode(k, t, chosen)
        ours = rfc6330.decode(k, t, {packet_esi(p): p[4:] for p in chosen})
        if theirs is None:
            fails += 1
            both += ours is None
        else:
            assert ours == theirs == block
    print(f"\n[decode] {trials} tiny-K trials: package failed {fails}, ours also failed {both}")
    assert both == fails


# --------------------------------------------------------------------------------------
# wire vectors (SPEC 2)
# --------------------------------------------------------------------------------------


def _frames_block(frames: list[bytes], t: int) -> bytes:
    out = bytearray()
    for frame in frames:
        sym = len(frame).to_bytes(2, "little") + frame
        assert len(sym) <= t
        out += sym + bytes(t - len(sym))
    return bytes(out)


def _block_frames(block: bytes, k: int, t: int) -> list[bytes]:
    frames = []
    for sym in split(block, k, t):
        n = int.from_bytes(sym[:2], "little")
        frames.append(sym[2 : 2 + n])
    return frames


def _vector_cases() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text())["cases"]


@pytest.mark.parametrize("case", _vector_cases(), ids=lambda c: f"k{c['k']}-t{c['t']}-r{c['r']}")
def test_vectors(case: Mapping[str, Any]) -> None:
    k, t, r = case["k"], case["t"], case["r"]
    frames = [bytes.fromhex(f) for f in case["frames"]]
    block = _frames_block(frames, t)
    bodies = {b["esi"]: bytes.fromhex(b["body"]) for b in case["repair_bodies"]}
    assert sorted(bodies) == list(range(k, k + r))
    for body in bodies.values():
        assert body[0] == k and len(body) == 1 + t
    ours = rfc6330.encode_repair(block, k, t, k, r)
    assert [bytes([k]) + s for s in ours] == [bodies[e] for e in range(k, k + r)]
    assert [p[4:] for p in pkg_packets(block, t, r)[k:]] == ours
    received: dict[int, bytes] = {
        i: s for i, s in enumerate(split(block, k, t)) if i not in case["lost_sources"]
    }
    received.update({esi: body[1:] for esi, body in bodies.items()})
    decoded = rfc6330.decode(k, t, received)
    assert decoded == block
    assert _block_frames(decoded, k, t) == frames


# --------------------------------------------------------------------------------------
# edge cases and input validation
# --------------------------------------------------------------------------------------


def test_all_sources_present_needs_no_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> None:
        raise AssertionError("repair machinery used")

    rng = random.Random(5)
    k, t = 10, 96
    block = rng.randbytes(k * t)
    repairs = rfc6330.encode_repair(block, k, t, k, 3)
    monkeypatch.setattr(rfc6330, "_coefficients", boom)
    monkeypatch.setattr(rfc6330, "_gf_solve", boom)
    sources = dict(enumerate(split(block, k, t)))
    assert rfc6330.decode(k, t, sources) == block
    with_repairs = {**sources, k: repairs[0], k + 2: repairs[2]}
    assert rfc6330.decode(k, t, with_repairs) == block
    assert rfc6330.decode(k, t, {i: bytearray(s) for i, s in sources.items()}) == block


def test_fewer_than_k_symbols_is_none() -> None:
    rng = random.Random(6)
    for k in (1, 2, 5, 10, 20, 60):
        t = 24
        block = rng.randbytes(k * t)
        syms = dict(enumerate(split(block, k, t)))
        syms.update({k + i: s for i, s in enumerate(rfc6330.encode_repair(block, k, t, k, k))})
        for _ in range(5):
            subset = dict(rng.sample(sorted(syms.items()), k - 1))
            assert rfc6330.decode(k, t, subset) is None
        assert rfc6330.decode(k, t, {}) is None
    # exactly K symbols decode (with overwhelming probability; this seed does)
    k, t = 10, 16
    block = rng.randbytes(k * t)
    reps = rfc6330.encode_repair(block, k, t, k, 10)
    assert rfc6330.decode(k, t, {k + i: s for i, s in enumerate(reps)}) == block


def test_odd_symbol_sizes_and_k_one() -> None:
    """T need not be a multiple of 8 for the codec itself; K=1 uses 9 padding symbols."""
    rng = random.Random(8)
    for t in (1, 3, 13, 100):
        for k in (1, 3, 7):
            block = rng.randbytes(k * t)
            reps = rfc6330.encode_repair(block, k, t, k, k + 2)
            syms = {k + i: s for i, s in enumerate(reps)}
            assert rfc6330.decode(k, t, syms) == block
    block = rng.randbytes(40)
    assert [p[4:] for p in pkg_packets(block, 40, 3)[1:]] == rfc6330.encode_repair(
        block, 1, 40, 1, 3
    )


def test_encode_count_zero_and_window() -> None:
    block = bytes(range(40))
    assert rfc6330.encode_repair(block, 5, 8, 5, 0) == []
    whole = rfc6330.encode_repair(block, 5, 8, 5, 10)
    assert rfc6330.encode_repair(block, 5, 8, 9, 3) == whole[4:7]
    assert rfc6330.encode_repair(bytearray(block), 5, 8, 5, 10) == whole
    assert rfc6330.encode_repair(memoryview(block), 5, 8, 5, 10) == whole


@pytest.mark.parametrize(
    "args",
    [
        (bytes(40), 0, 8, 5, 1),  # k too small
        (bytes(256 * 8), 256, 8, 256, 1),  # k too large
        (bytes(39), 5, 8, 5, 1),  # wrong block length
        (bytes(41), 5, 8, 5, 1),
        (bytes(40), 5, 8, 4, 1),  # first ESI is a source ESI
        (bytes(40), 5, 8, -1, 1),
        (bytes(40), 5, 8, 5, -1),  # negative count
        (bytes(40), 5, 8, rfc6330.MAX_ESI, 2),  # runs past the last ESI
        (bytes(40), 5, 8, 1 << 24, 1),
        (bytes(0), 5, 0, 5, 1),  # symbol size 0
        (bytes(40), 5, 8.0, 5, 1),  # not ints
        (bytes(40), True, 8, 5, 1),
        (bytes(40), "5", 8, 5, 1),
        ("x" * 40, 5, 8, 5, 1),  # not bytes
        ([0] * 40, 5, 8, 5, 1),
        (None, 5, 8, 5, 1),
    ],
)
def test_encode_value_errors(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        rfc6330.encode_repair(*args)


@pytest.mark.parametrize(
    ("k", "t", "symbols"),
    [
        (0, 8, {}),
        (256, 8, {}),
        (-3, 8, {}),
        (5, 0, {}),
        (5, -8, {}),
        (5, 1 << 16, {}),
        (5, 8, {0: bytes(7)}),  # short symbol
        (5, 8, {0: bytes(9)}),  # long symbol
        (5, 8, {6: bytes(16)}),  # long repair symbol
        (5, 8, {-1: bytes(8)}),  # negative ESI
        (5, 8, {1 << 24: bytes(8)}),  # ESI beyond 24 bits
        (5, 8, {"0": bytes(8)}),  # non-int ESI
        (5, 8, {1.0: bytes(8)}),
        (5, 8, {None: bytes(8)}),
        (5, 8, {0: "abcdefgh"}),  # str symbol
        (5, 8, {0: None}),
        (5, 8, {0: [0] * 8}),
        (5, 8, [(0, bytes(8))]),  # not a mapping
        (5, 8, None),
        (5.0, 8, {}),
        (5, "8", {}),
        (None, 8, {}),
    ],
)
def test_decode_value_errors(k: Any, t: Any, symbols: Any) -> None:
    with pytest.raises(ValueError):
        rfc6330.decode(k, t, symbols)


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(-2, 260),
    t=st.integers(-2, 40),
    symbols=st.dictionaries(
        st.one_of(st.integers(-5, (1 << 24) + 5), st.text(max_size=2)),
        st.one_of(st.binary(max_size=42), st.none(), st.integers()),
        max_size=12,
    ),
)
def test_decode_never_raises_other_than_value_error(k: int, t: int, symbols: dict) -> None:
    try:
        out = rfc6330.decode(k, t, symbols)
    except ValueError:
        return
    assert out is None or (isinstance(out, bytes) and len(out) == k * t)


def test_decode_garbage_repairs_do_not_crash() -> None:
    """Inconsistent (random) repair data still yields a block or None, never an error."""
    rng = random.Random(12)
    for _ in range(200):
        k = rng.randint(1, 30)
        t = random_t(rng, 64)
        syms = {e: rng.randbytes(t) for e in rng.sample(range(k + 3 * k), k + rng.randint(0, 3))}
        out = rfc6330.decode(k, t, syms)
        assert out is None or len(out) == k * t


def test_systematic_property_and_table() -> None:
    """Each K' row: encoding symbols of source ISIs are the source symbols themselves."""
    for params in rfc6330._TABLE2:
        assert params.l == params.kp + params.s + params.h
        assert rfc6330._is_prime(params.s) and rfc6330._is_prime(params.w)
        eye = np.array([rfc6330._coefficients(params.kp, i) for i in range(params.kp)])
        assert np.array_equal(eye, np.eye(params.kp, dtype=np.uint8)), params.kp
