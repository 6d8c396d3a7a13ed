from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wzp.proto.codecs import CODEC_INFO, CodecId, codec_from_name
from wzp.proto.f32 import decode_ratio, encode_ratio, repair_count
from wzp.proto.header import (
    HEADER_LEN,
    Datagram,
    Drop,
    DropReason,
    MediaHeader,
    QualityReport,
    build_datagram,
    parse_datagram,
)
from wzp.proto.profiles import CATASTROPHIC, DEGRADED, GOOD, PHASE1_PROFILES

from ..vectors import load


def _header_from_vector(f: dict) -> MediaHeader:
    return MediaHeader(
        version=f["v"],
        is_repair=bool(f["t"]),
        codec=f["codec"],
        has_report=bool(f["q"]),
        ratio_e=f["e"],
        seq=f["seq"],
        ts=f["ts"],
        block=f["block"],
        symbol=f["symbol"],
        stream=f["stream"],
        epoch=f["epoch"],
    )


def test_header_vectors_both_directions() -> None:
    cases = load("header")["cases"]
    assert len(cases) >= 10
    for case in cases:
        expected = _header_from_vector(case["fields"])
        raw = bytes.fromhex(case["hex"])
        assert expected.encode() == raw
        assert MediaHeader.decode(raw) == expected


def test_ratio_vectors() -> None:
    data = load("ratio")
    for case in data["encode"]:
        assert encode_ratio(case["ratio"]) == case["e"], case
        assert decode_ratio(case["e"]) == case["decoded"], case
    for case in data["repair"]:
        assert repair_count(case["k"], case["ratio"]) == case["repair"], case


def test_ratio_rules_for_odd_values() -> None:
    assert encode_ratio(-0.5) == 0
    assert encode_ratio(float("nan")) == 0
    assert encode_ratio(float("inf")) == 127
    assert encode_ratio(1e30) == 127
    assert repair_count(5, float("nan")) == 0
    assert repair_count(5, -1.0) == 0
    # every 7-bit value decodes and re-encodes to itself
    for e in range(128):
        assert encode_ratio(decode_ratio(e)) == e


def test_quality_report_vectors() -> None:
    for case in load("quality_report")["cases"]:
        report = QualityReport.from_measured(
            case["loss_percent"], case["rtt_ms"], case["jitter_ms"], case["cap_kbps"]
        )
        raw = bytes.fromhex(case["hex"])
        assert report.encode() == raw
        parsed = QualityReport.decode(raw)
        assert parsed == report
        assert parsed.loss_percent == case["decoded_loss_percent"]


def test_quality_report_clamps() -> None:
    r = QualityReport.from_measured(float("nan"), -3, 1e9, float("inf"))
    assert r.encode() == bytes([0, 0, 255, 255])
    assert QualityReport.from_measured(100.0, 0, 0, 0).loss == 255
    assert QualityReport.from_measured(1e6, 0, 0, 0).loss == 255


def test_codec_table_matches_spec() -> None:
    assert codec_from_name("Codec2_1200") is CodecId.Codec2_1200
    assert CODEC_INFO[CodecId.Opus6k].frame_ms == 40
    assert CODEC_INFO[CodecId.Codec2_3200].frame_bytes == 8
    assert CODEC_INFO[CodecId.Codec2_1200].frame_bytes == 6
    assert PHASE1_PROFILES == (GOOD, DEGRADED, CATASTROPHIC)
    assert (GOOD.codec, GOOD.fec_ratio, GOOD.frame_duration_ms, GOOD.frames_per_block) == (
        CodecId.Opus24k,
        float.fromhex("0x1.99999ap-3"),  # f32(0.2)
        20,
        5,
    )


def test_parse_rules() -> None:
    hdr = MediaHeader(codec=1, seq=7, ts=100)
    body = bytes(20)
    # 1. too short
    assert parse_datagram(b"\x00" * 11) == Drop(DropReason.TOO_SHORT, "11 bytes")
    q_hdr = MediaHeader(codec=1, has_report=True)
    short = parse_datagram(q_hdr.encode() + b"\x01\x02\x03")
    assert isinstance(short, Drop) and short.reason is DropReason.REPORT_TRUNCATED
    # 2. codec 9..15 dropped, 0..8 accepted
    for codec in range(16):
        result = parse_datagram(MediaHeader(codec=codec).encode() + body)
        if codec <= 8:
            assert isinstance(result, Datagram)
        else:
            assert isinstance(result, Drop) and result.reason is DropReason.UNKNOWN_CODEC
    # 3. body boundaries with and without report
    report = QualityReport(1, 2, 3, 4)
    raw = build_datagram(q_hdr, body, report)
    parsed = parse_datagram(raw)
    assert isinstance(parsed, Datagram)
    assert parsed.body == body and parsed.report == report
    assert parsed.aad == q_hdr.encode() + report.encode()
    parsed = parse_datagram(build_datagram(hdr, body, None))
    assert isinstance(parsed, Datagram)
    assert parsed.body == body and parsed.report is None and parsed.aad == hdr.encode()
    # a body shorter than the tag is dropped on an encrypted stream only
    tiny = hdr.encode() + bytes(15)
    assert isinstance(parse_datagram(tiny), Drop)
    assert isinstance(parse_datagram(tiny, encrypted=False), Datagram)
    # an empty payload with only a report (keep-alive) is a valid plaintext datagram
    assert isinstance(parse_datagram(q_hdr.encode() + report.encode(), encrypted=False), Datagram)


header_st = st.builds(
    MediaHeader,
    version=st.integers(0, 1),
    is_repair=st.booleans(),
    codec=st.integers(0, 15),
    has_report=st.booleans(),
    ratio_e=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFF_FFFF),
    block=st.integers(0, 255),
    symbol=st.integers(0, 255),
    stream=st.integers(0, 255),
    epoch=st.integers(0, 255),
)


@given(header_st)
def test_header_round_trip(header: MediaHeader) -> None:
    raw = header.encode()
    assert len(raw) == HEADER_LEN
    assert MediaHeader.decode(raw) == header


@given(st.binary(max_size=200), st.booleans())
def test_parse_never_raises(data: bytes, encrypted: bool) -> None:
    result = parse_datagram(data, encrypted=encrypted)
    assert isinstance(result, Datagram | Drop)
    if isinstance(result, Datagram):
        rebuilt = build_datagram(result.header, result.body, result.report)
        # byte 1 bits 1..0 are ignored on read and written as 0
        assert rebuilt == data[:1] + bytes([data[1] & 0xFC]) + data[2:]


@given(header_st, st.binary(min_size=16, max_size=64), st.integers(0, 2**32 - 1))
def test_build_parse_round_trip(header: MediaHeader, body: bytes, report_bits: int) -> None:
    if header.codec > 8:
        return
    report = QualityReport(*report_bits.to_bytes(4, "big")) if header.has_report else None
    parsed = parse_datagram(build_datagram(header, body, report))
    assert isinstance(parsed, Datagram)
    assert (parsed.header, parsed.body, parsed.report) == (header, body, report)
