from __future__ import annotations

import contextlib
import random
import types
from collections.abc import Mapping

import pytest
import raptorq
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.fec.backend import BackendPanic, PureBackend, RaptorqBackend, load_backend
from wzp.fec.block import (
    BlockDecoder,
    BlockEncoder,
    FecError,
    pack_symbol,
    parse_repair_body,
    symbol_size_for,
    unpack_symbol,
)

from ..vectors import load

BACKENDS = {"raptorq": lambda: RaptorqBackend(raptorq), "pure": PureBackend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest):
    return BACKENDS[request.param]()


def test_symbol_size_rule() -> None:
    assert symbol_size_for([]) == 8
    assert symbol_size_for([0]) == 8
    assert symbol_size_for([6]) == 8
    assert symbol_size_for([7]) == 16
    assert symbol_size_for([60, 94]) == 96
    assert symbol_size_for([1198]) == 1200
    with pytest.raises(FecError):
        symbol_size_for([1199])
    sym = pack_symbol(b"abc", 8)
    assert sym == b"\x03\x00abc\x00\x00\x00"
    assert unpack_symbol(sym) == b"abc"
    with pytest.raises(FecError):
        unpack_symbol(b"\xff\x00" + bytes(6))


def test_fec_vectors(backend) -> None:
    for case in load("fec")["cases"]:
        frames = [bytes.fromhex(f) for f in case["frames"]]
        enc = BlockEncoder(backend)
        for i, frame in enumerate(frames):
            assert enc.add(frame) == i
        assert symbol_size_for([len(f) for f in frames]) == case["t"]
        bodies = enc.repair_bodies(case["ratio"])
        assert len(bodies) == case["r"]
        expected = {rb["esi"]: bytes.fromhex(rb["body"]) for rb in case["repair_bodies"]}
        for i, body in enumerate(bodies):
            esi = case["k"] + i
            if esi in expected:
                assert body == expected[esi], f"repair ESI {esi}"
        # parse back: the sources in lost_sources are recovered from the repairs
        dec = BlockDecoder(backend)
        for i, frame in enumerate(frames):
            if i not in case["lost_sources"]:
                assert dec.add_source(i, frame)
        for i, body in enumerate(bodies):
            dec.add_repair(case["k"] + i, body)
        recovered = dec.try_recover()
        assert recovered == {i: frames[i] for i in case["lost_sources"]}


def _opus_like_frames(rng: random.Random, k: int) -> list[bytes]:
    """Real-sized frames: Opus 24k at 20 ms is 50-70 bytes, with the odd larger one."""
    sizes = [rng.choice((rng.randint(45, 75), rng.randint(20, 120))) for _ in range(k)]
    return [rng.randbytes(n) for n in sizes]


@pytest.mark.parametrize("k,ratio", [(5, 0.2), (10, 0.5), (8, 1.0), (5, 1.0), (8, 2.0)])
def test_any_k_of_k_plus_r_symbols_decode(backend, k: int, ratio: float) -> None:
    """K of the K+R symbols (at least one source lost) recover every lost source.

    RaptorQ is not MDS: exactly K symbols decode with probability about 1 - 1/256,
    K+1 with about 1 - 1/256**2. Measured over seeded trials and printed.
    """
    rng = random.Random(f"{k}-{ratio}-{backend.name}")
    trials = 400 if backend.name == "raptorq" else 250
    ok = {0: 0, 1: 0}
    runs = {0: 0, 1: 0}
    for _ in range(trials):
        frames = _opus_like_frames(rng, k)
        enc = BlockEncoder(backend)
        for f in frames:
            enc.add(f)
        bodies = enc.repair_bodies(ratio)
        r = len(bodies)
        for extra in (0, 1):
            if r - extra < 1:
                continue  # cannot lose a source and still hold K + extra symbols
            lost = rng.sample(range(k), rng.randint(1, min(k, r - extra)))
            used = rng.sample(range(r), len(lost) + extra)
            dec = BlockDecoder(backend)
            for esi in range(k):
                if esi not in lost:
                    dec.add_source(esi, frames[esi])
            for j in used:
                dec.add_repair(k + j, bodies[j])
            runs[extra] += 1
            got = dec.try_recover()
            if got:
                assert got == {i: frames[i] for i in lost}  # never wrong, only absent
                ok[extra] += 1
    for extra in (0, 1):
        if runs[extra]:
            print(
                f"\n[fec] {backend.name} K={k} ratio={ratio}: K+{extra} symbols decoded "
                f"{ok[extra]}/{runs[extra]} = {ok[extra] / runs[extra]:.4f}"
            )
    assert runs[0] == trials
    assert ok[0] / runs[0] >= 0.98
    if runs[1]:
        assert ok[1] / runs[1] >= 0.995


class _CountingBackend:
    name = "counting"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.decodes = 0

    def encode_repair(self, *args):
        return self.inner.encode_repair(*args)

    def decode(self, k: int, t: int, symbols: Mapping[int, bytes]) -> bytes | None:
        self.decodes += 1
        return self.inner.decode(k, t, symbols)


def test_complete_block_never_decodes_or_waits(backend) -> None:
    spy = _CountingBackend(backend)
    frames = [bytes([i]) * 40 for i in range(5)]
    enc = BlockEncoder(spy)
    for f in frames:
        enc.add(f)
    (repair,) = enc.repair_bodies(0.2)
    dec = BlockDecoder(spy)
    for i, f in enumerate(frames):
        dec.add_source(i, f)
        assert dec.try_recover() == {}  # nothing missing yet, nothing to do
    dec.add_repair(5, repair)
    assert dec.try_recover() == {}
    assert spy.decodes == 0
    assert dec.done


def test_recovery_waits_for_k_symbols_then_happens_once(backend) -> None:
    frames = [bytes([i]) * (30 + i) for i in range(10)]
    enc = BlockEncoder(backend)
    for f in frames:
        enc.add(f)
    bodies = enc.repair_bodies(0.5)
    dec = BlockDecoder(backend)
    for i in (0, 2, 4, 6, 8):
        dec.add_source(i, frames[i])
    for j, body in enumerate(bodies[:4]):
        dec.add_repair(10 + j, body)
        assert dec.try_recover() == {}  # 5 + (j+1) < 10 symbols
    dec.add_repair(14, bodies[4])
    got = dec.try_recover()
    assert got == {i: frames[i] for i in (1, 3, 5, 7, 9)}
    assert dec.try_recover() == {}  # handed out once
    # a late source of an already recovered block is harmless
    dec.add_source(1, frames[1])
    assert dec.try_recover() == {}


def test_malformed_repairs_are_refused() -> None:
    with pytest.raises(FecError):
        parse_repair_body(b"\x05" + bytes(7))  # T=7
    with pytest.raises(FecError):
        parse_repair_body(b"\x00" + bytes(8))  # K=0
    with pytest.raises(FecError):
        parse_repair_body(b"\x05" + bytes(12))  # T not a multiple of 8
    with pytest.raises(FecError):
        parse_repair_body(b"\x05" + bytes(1208))  # T over 1200
    dec = BlockDecoder(PureBackend())
    dec.add_repair(5, b"\x05" + bytes(16))
    with pytest.raises(FecError, match="block has K=5"):
        dec.add_repair(6, b"\x06" + bytes(16))
    with pytest.raises(FecError, match="block has K=5"):
        dec.add_repair(6, b"\x05" + bytes(24))
    with pytest.raises(FecError, match="inside the source range"):
        dec.add_repair(3, b"\x05" + bytes(16))
    assert not dec.add_source(7, b"x")  # beyond K
    assert not dec.add_source(0, bytes(15))  # does not fit T=16
    # sources that contradict the first repair make that repair an error
    dec2 = BlockDecoder(PureBackend())
    assert dec2.add_source(9, b"abc")
    with pytest.raises(FecError, match="differ"):
        dec2.add_repair(5, b"\x05" + bytes(8))


def test_real_raptorq_panic_is_contained() -> None:
    """A pyo3 PanicException (a BaseException) never leaves the backend."""

    class _PanickingDecoder:
        @staticmethod
        def with_defaults(transfer_length: int, mtu: int):
            return raptorq.Decoder.with_defaults(0, 8)  # panics: remainder by zero

    class _PanickingEncoder:
        @staticmethod
        def with_defaults(data: bytes, mtu: int):
            return raptorq.Encoder.with_defaults(b"", 8)  # panics too

    shim = types.SimpleNamespace(Decoder=_PanickingDecoder, Encoder=_PanickingEncoder)
    backend = RaptorqBackend(shim)
    assert backend.decode(2, 8, {0: bytes(8), 2: bytes(8)}) is None
    with pytest.raises(BackendPanic):
        backend.encode_repair(bytes(16), 2, 8, 2, 1)
    assert backend.panics == 2


def test_backend_selection() -> None:
    assert load_backend("auto").name == "raptorq"
    assert load_backend("pure").name == "pure"
    with pytest.raises(ValueError):
        load_backend("fortran")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 255),
    st.dictionaries(st.integers(0, 300), st.binary(max_size=40), max_size=12),
    st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=40)), max_size=6),
)
def test_block_decoder_never_raises_unexpectedly(
    k_hint: int, sources: dict[int, bytes], repairs: list[tuple[int, bytes]]
) -> None:
    dec = BlockDecoder(RaptorqBackend(raptorq))
    for esi, payload in sources.items():
        dec.add_source(esi, payload)
    for esi, body in repairs:
        with contextlib.suppress(FecError):
            dec.add_repair(esi, bytes([k_hint]) + body)
    result = dec.try_recover()
    assert isinstance(result, dict)
