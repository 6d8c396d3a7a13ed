"""SPEC 3.1 framing: u32 big-endian length || payload, one message per stream."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.proto.framing import MAX_FRAME_PAYLOAD, FrameReader, FramingError, frame, unframe

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SIGNAL = json.loads((VECTORS / "signal.json").read_text(encoding="utf-8"))


def _feed_all(reader: FrameReader, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for c in chunks:
        out += reader.feed(c)
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("case", SIGNAL["exact"], ids=lambda c: c["json"][:24])
def test_frame_vectors(case: dict) -> None:
    payload = case["json"].encode("utf-8")
    assert frame(payload).hex() == case["frame"]
    assert unframe(bytes.fromhex(case["frame"])) == payload


@pytest.mark.parametrize("case", SIGNAL["exact"], ids=lambda c: c["json"][:24])
def test_vector_byte_by_byte(case: dict) -> None:
    data = bytes.fromhex(case["frame"])
    reader = FrameReader()
    out = _feed_all(reader, [data[i : i + 1] for i in range(len(data))])
    assert out == [case["json"].encode("utf-8")]
    reader.end_of_stream()


# ------------------------------------------------------------------------- frame()


def test_frame_layout() -> None:
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(bytearray(b"xy")) == b"\x00\x00\x00\x02xy"


def test_frame_limit() -> None:
    ok = bytes(MAX_FRAME_PAYLOAD)
    assert frame(ok)[:4] == struct.pack(">I", MAX_FRAME_PAYLOAD)
    with pytest.raises(FramingError, match="1048576"):
        frame(bytes(MAX_FRAME_PAYLOAD + 1))
    assert issubclass(FramingError, ValueError)


# ------------------------------------------------------------------------- FrameReader


def test_clean_single_message() -> None:
    r = FrameReader()
    assert r.feed(b"\x00\x00") == []
    assert r.feed(b"\x00\x02h") == []
    assert r.buffered == 1
    assert r.feed(b"i") == [b"hi"]
    assert r.messages == 1
    r.end_of_stream()  # clean: returns None


def test_empty_feed_and_empty_payload() -> None:
    r = FrameReader()
    assert r.feed(b"") == []
    assert r.feed(b"\x00\x00\x00\x00") == [b""]
    r.end_of_stream()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "without a message"),
        (b"\x00\x00", "length prefix: 2 of 4"),
        (b"\x00\x00\x00\x05abc", "3 of 5 payload bytes"),
        (b"\x00\x00\x00\x05", "0 of 5 payload bytes"),
    ],
)
def test_unclean_end(data: bytes, match: str) -> None:
    r = FrameReader()
    r.feed(data)
    with pytest.raises(FramingError, match=match):
        r.end_of_stream()
    with pytest.raises(FramingError):  # the error is final
        r.end_of_stream()


def test_extra_bytes_after_message() -> None:
    r = FrameReader()
    with pytest.raises(FramingError, match="1 extra byte"):
        r.feed(frame(b"ok") + b"x")
    r = FrameReader()
    assert r.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(FramingError, match="extra byte"):
        r.feed(frame(b"second"))
    with pytest.raises(FramingError, match="extra byte"):  # sticky
        r.feed(b"")
    with pytest.raises(FramingError):
        r.end_of_stream()


def test_multi_mode_reads_back_to_back_frames() -> None:
    r = FrameReader(single=False)
    assert r.feed(frame(b"a") + frame(b"") + frame(b"bc")[:3]) == [b"a", b""]
    assert r.feed(frame(b"bc")[3:]) == [b"bc"]
    r.end_of_stream()
    r = FrameReader(single=False)
    r.end_of_stream()  # zero messages is a clean end in multi mode


@pytest.mark.parametrize("length", [MAX_FRAME_PAYLOAD + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_oversize_refused_on_prefix_without_buffering(length: int) -> None:
    prefix = struct.pack(">I", length)
    r = FrameReader()
    for b in prefix[:3]:
        assert r.feed(bytes([b])) == []
    with pytest.raises(FramingError, match=f"announced length {length} is over"):
        r.feed(prefix[3:] + b"payload that must not be kept")
    assert r.buffered == 0
    with pytest.raises(FramingError, match="announced length"):
        r.feed(b"more")


def test_exact_limit_accepted() -> None:
    r = FrameReader()
    assert r.feed(struct.pack(">I", MAX_FRAME_PAYLOAD)) == []
    assert r.feed(bytes(MAX_FRAME_PAYLOAD)) == [bytes(MAX_FRAME_PAYLOAD)]
    r.end_of_stream()


def test_custom_limit() -> None:
    r = FrameReader(max_payload=10)
    with pytest.raises(FramingError, match="11 is over the 10-byte limit"):
        r.feed(struct.pack(">I", 11))


def test_feed_after_end() -> None:
    r = FrameReader()
    r.feed(frame(b"x"))
    r.end_of_stream()
    with pytest.raises(FramingError, match="after end_of_stream"):
        r.feed(b"")


def test_unframe_errors() -> None:
    assert unframe(frame(b"payload")) == b"payload"
    for bad in (b"", b"\x00", frame(b"ab")[:-1], frame(b"ab") + b"\x00", frame(b"") * 2):
        with pytest.raises(FramingError):
            unframe(bad)


def test_memoryview_input() -> None:
    data = frame(b"hello")
    r = FrameReader()
    assert r.feed(memoryview(data)[:6]) == []
    assert r.feed(bytearray(data[6:])) == [b"hello"]
    r.end_of_stream()


# ------------------------------------------------------------------------- properties

payloads_st = st.binary(max_size=300)
cuts_st = st.lists(st.integers(min_value=0, max_value=2000), max_size=12)


@settings(max_examples=200, deadline=None)
@given(payload=payloads_st, cuts=cuts_st)
def test_single_any_chunking(payload: bytes, cuts: list[int]) -> None:
    data = frame(payload)
    r = FrameReader()
    assert _feed_all(r, _split(data, cuts)) == [payload]
    r.end_of_stream()


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(payloads_st, max_size=6), cuts=cuts_st)
def test_multi_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frame(p) for p in payloads)
    r = FrameReader(single=False)
    assert _feed_all(r, _split(data, cuts)) == payloads
    r.end_of_stream()


@settings(max_examples=200, deadline=None)
@given(payload=payloads_st, cut=st.integers(min_value=0), cuts=cuts_st)
def test_truncated_stream_is_an_error(payload: bytes, cut: int, cuts: list[int]) -> None:
    data = frame(payload)
    data = data[: cut % len(data)]  # strictly shorter than the frame
    r = FrameReader()
    assert _feed_all(r, _split(data, cuts)) == []
    with pytest.raises(FramingError):
        r.end_of_stream()


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        # plausible prefixes: small lengths (so payloads complete) and huge ones
        st.tuples(
            st.integers(min_value=0, max_value=0xFFFFFFFF) | st.integers(0, 40),
            st.binary(max_size=100),
        ).map(lambda t: struct.pack(">I", t[0]) + t[1]),
    ),
    cuts=cuts_st,
    single=st.booleans(),
)
def test_arbitrary_bytes_give_payloads_or_framing_error(
    data: bytes, cuts: list[int], single: bool
) -> None:
    r = FrameReader(single=single)
    out: list[bytes] = []
    try:
        for c in _split(data, cuts):
            out += r.feed(c)
        r.end_of_stream()
    except FramingError:
        pass
    else:
        # a clean end means the input was exactly these frames
        assert b"".join(frame(p) for p in out) == data
        assert len(out) == 1 or (not single)
    assert r.buffered <= max(4, MAX_FRAME_PAYLOAD)
    assert all(len(p) <= MAX_FRAME_PAYLOAD for p in out)
