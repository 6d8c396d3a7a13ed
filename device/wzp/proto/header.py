"""Media datagram header (SPEC 1.1), quality report (SPEC 1.3) and parse rules (SPEC 1.4).

Everything here is pure: bytes in, values out. Malformed input never raises past
:func:`parse_datagram`; it returns a :class:`Drop` naming the reason, which the
receive loop counts.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .codecs import MAX_KNOWN_CODEC
from .f32 import decode_ratio, encode_ratio

HEADER_LEN = 12
REPORT_LEN = 4
TAG_LEN = 16

_HDR = struct.Struct(">BBHIBBBB")


@dataclass(frozen=True, slots=True)
class MediaHeader:
    """The 12 header bytes as fields.

    ``codec`` is the raw 4-bit id (0..15) so that every header can be represented,
    including the ones the parse rules drop; ``ratio_e`` is the 7-bit encoded FEC
    ratio (:func:`wzp.proto.f32.encode_ratio`).
    """

    version: int = 0
    is_repair: bool = False
    codec: int = 0
    has_report: bool = False
    ratio_e: int = 0
    seq: int = 0
    ts: int = 0
    block: int = 0
    symbol: int = 0
    stream: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        for name, limit in (
            ("version", 1),
            ("codec", 15),
            ("ratio_e", 127),
            ("seq", 0xFFFF),
            ("ts", 0xFFFF_FFFF),
            ("block", 0xFF),
            ("symbol", 0xFF),
            ("stream", 0xFF),
            ("epoch", 0xFF),
        ):
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise ValueError(f"header field {name}={value} out of range 0..{limit}")

    @property
    def fec_ratio(self) -> float:
        return decode_ratio(self.ratio_e)

    def encode(self) -> bytes:
        b0 = (
            (self.version << 7)
            | (int(self.is_repair) << 6)
            | (self.codec << 2)
            | (int(self.has_report) << 1)
            | (self.ratio_e >> 6)
        )
        b1 = (self.ratio_e & 0x3F) << 2
        return _HDR.pack(
            b0, b1, self.seq, self.ts, self.block, self.symbol, self.stream, self.epoch
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> MediaHeader:
        """Fields of the first 12 bytes of ``data``. Raises ``ValueError`` when shorter."""
        if len(data) < HEADER_LEN:
            raise ValueError(f"header needs {HEADER_LEN} bytes, got {len(data)}")
        b0, b1, seq, ts, block, symbol, stream, epoch = _HDR.unpack_from(data, 0)
        return cls(
            version=b0 >> 7,
            is_repair=bool(b0 & 0x40),
            codec=(b0 >> 2) & 0x0F,
            has_report=bool(b0 & 0x02),
            ratio_e=((b0 & 0x01) << 6) | (b1 >> 2),
            seq=seq,
            ts=ts,
            block=block,
            symbol=symbol,
            stream=stream,
            epoch=epoch,
        )

    @staticmethod
    def ratio_field(ratio: float) -> int:
        return encode_ratio(ratio)


_F32 = np.float32


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The 4 report bytes (SPEC 1.3) in wire units."""

    loss: int = 0  # 0..255 for 0..100 % loss before FEC
    rtt_4ms: int = 0
    jitter_ms: int = 0
    cap_kbps: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "rtt_4ms", "jitter_ms", "cap_kbps"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ValueError(f"report field {name}={value} out of range 0..255")

    @classmethod
    def from_measured(
        cls, loss_percent: float, rtt_ms: float, jitter_ms: float, cap_kbps: float
    ) -> QualityReport:
        """Wire units from measured values, clamped (loss in f32 as the SPEC says)."""
        return cls(
            loss=_encode_loss(loss_percent),
            rtt_4ms=_clamp_u8(rtt_ms / 4),
            jitter_ms=_clamp_u8(jitter_ms),
            cap_kbps=_clamp_u8(cap_kbps),
        )

    @property
    def loss_percent(self) -> float:
        return float(_F32(self.loss) / _F32(255) * _F32(100))

    @property
    def rtt_ms(self) -> int:
        return self.rtt_4ms * 4

    def encode(self) -> bytes:
        return bytes((self.loss, self.rtt_4ms, self.jitter_ms, self.cap_kbps))

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> QualityReport:
        if len(data) != REPORT_LEN:
            raise ValueError(f"report needs {REPORT_LEN} bytes, got {len(data)}")
        return cls(data[0], data[1], data[2], data[3])


def _clamp_u8(value: float) -> int:
    if math.isnan(value) or value <= 0:
        return 0
    if value >= 255:
        return 255
    return math.trunc(value)


def _encode_loss(percent: float) -> int:
    """``min(255, trunc(f32(percent) / 100 * 255))`` in f32; negative or NaN -> 0."""
    if math.isnan(percent) or percent <= 0:
        return 0
    if math.isinf(percent):
        return 255
    value = _F32(percent) / _F32(100) * _F32(255)
    return min(255, math.trunc(float(value)))


class DropReason(Enum):
    """Why a received datagram was not used. Every drop is counted by reason."""

    TOO_SHORT = "too-short"
    REPORT_TRUNCATED = "report-truncated"
    UNKNOWN_CODEC = "unknown-codec"
    BODY_TOO_SHORT = "body-too-short"
    # The rest are decided after parsing, by the crypto, replay and FEC layers.
    BAD_TAG = "bad-tag"
    REPLAY = "replay"
    UNKNOWN_EPOCH = "unknown-epoch"
    WRONG_STREAM = "wrong-stream"
    MALFORMED_REPAIR = "malformed-repair"
    MALFORMED_PAYLOAD = "malformed-payload"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class Drop:
    reason: DropReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Datagram:
    """A parsed media datagram: header, body (ciphertext+tag), optional report.

    ``aad`` is the associated data of SPEC 6.4: the 12 header bytes, then the 4
    report bytes when Q=1.
    """

    header: MediaHeader
    body: bytes
    report: QualityReport | None
    aad: bytes


def parse_datagram(data: bytes, *, encrypted: bool = True) -> Datagram | Drop:
    """Apply SPEC 1.4 to one received datagram. Never raises on any input bytes."""
    n = len(data)
    if n < HEADER_LEN:
        return Drop(DropReason.TOO_SHORT, f"{n} bytes")
    header = MediaHeader.decode(data)
    if header.has_report and n < HEADER_LEN + REPORT_LEN:
        return Drop(DropReason.REPORT_TRUNCATED, f"{n} bytes with Q=1")
    if header.codec > MAX_KNOWN_CODEC:
        return Drop(DropReason.UNKNOWN_CODEC, f"codec id {header.codec}")
    if header.has_report:
        body = bytes(data[HEADER_LEN : n - REPORT_LEN])
        report_bytes = bytes(data[n - REPORT_LEN :])
        report: QualityReport | None = QualityReport.decode(report_bytes)
        aad = bytes(data[:HEADER_LEN]) + report_bytes
    else:
        body = bytes(data[HEADER_LEN:])
        report = None
        aad = bytes(data[:HEADER_LEN])
    if encrypted and len(body) < TAG_LEN:
        return Drop(DropReason.BODY_TOO_SHORT, f"body {len(body)} bytes < tag")
    return Datagram(header, body, report, aad)


def build_datagram(header: MediaHeader, body: bytes, report: QualityReport | None) -> bytes:
    """``header || body || report``; the header's Q bit must agree with ``report``."""
    if header.has_report != (report is not None):
        raise ValueError("header Q bit and report presence disagree")
    out = header.encode() + body
    if report is not None:
        out += report.encode()
    return out
