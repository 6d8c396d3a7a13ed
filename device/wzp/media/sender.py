"""The sending half of a media stream: frames -> payloads -> header -> FEC -> encryption.

Source packets go out the moment each frame is encoded; a block's repair packets go
out right after its last source packet (SPEC 2). A tier change requested at any time
takes effect at the next block boundary, where frame size, read size, timestamp step
and encoder state change together (ARCHITECTURE rule 5). Pure: the caller passes
``now`` and gets datagrams back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..crypto.media import MediaCrypto
from ..fec.backend import FecBackend, default_backend
from ..fec.block import BlockEncoder
from ..proto.f32 import encode_ratio
from ..proto.header import MediaHeader, QualityReport, build_datagram
from .ladder import Tier

SAMPLE_RATE = 48_000
#: symbol byte used by keep-alives (empty payload), which belong to no FEC block
KEEPALIVE_SYMBOL = 0xFF


class TierEncoder(Protocol):
    """What the sender needs from the codec layer."""

    def configure(self, tier: Tier) -> None: ...

    def encode(self, pcm48: np.ndarray) -> bytes: ...

    def set_loss_hint(self, percent: int) -> None: ...


@dataclass
class SenderStats:
    source_packets: int = 0
    repair_packets: int = 0
    keepalives: int = 0
    bytes: int = 0  # datagram bytes (header, body, tag, report)
    blocks: int = 0
    tier_changes: int = 0
    frames_dropped: int = 0  # payloads over the SPEC limit (never happens with real codecs)


@dataclass
class MediaSender:
    tier: Tier
    encoder: TierEncoder
    crypto: MediaCrypto | None = None
    stream: int = 0
    backend: FecBackend = field(default_factory=default_backend)

    def __post_init__(self) -> None:
        self.stats = SenderStats()
        self.encoder.configure(self.tier)
        self._pending: Tier | None = None
        self._seq = 0
        self._ts = 0  # media time of the next frame, ms
        self._block_id = 0
        self._block = BlockEncoder(self.backend)
        self._block_ts = 0
        self._report: QualityReport | None = None
        self._report_copies = 0
        self.tiers_used: dict[str, int] = {}

    # -- control -------------------------------------------------------------------------

    @property
    def frame_samples(self) -> int:
        """How many 48 kHz samples the next :meth:`push_frame` takes."""
        return self.tier.frame_ms * SAMPLE_RATE // 1000

    def request_tier(self, tier: Tier) -> None:
        """Switch tiers at the next block boundary (at once if no block is open)."""
        if tier == self.tier:
            self._pending = None
            return
        self._pending = tier
        if self._block.k == 0:
            self._apply_pending()

    def attach_report(self, report: QualityReport, copies: int = 1) -> None:
        """The next ``copies`` packets carry this quality report (Q=1, 4 bytes each)."""
        self._report = report
        self._report_copies = copies

    def set_loss_hint(self, loss_fraction: float) -> None:
        self.encoder.set_loss_hint(round(min(max(loss_fraction, 0.0), 1.0) * 100))

    @property
    def block_empty(self) -> bool:
        return self._block.k == 0

    def skip_time(self, ms: int) -> None:
        """Advance media time over a pause (push-to-talk released), block closed first."""
        if self._block.k:
            raise ValueError("close the block before skipping time")
        self._ts = (self._ts + ms) & 0xFFFF_FFFF

    # -- packets -------------------------------------------------------------------------

    def push_frame(self, pcm48: np.ndarray) -> list[bytes]:
        """Encode one frame of exactly :attr:`frame_samples`; returns the datagrams to send."""
        if len(pcm48) != self.frame_samples:
            raise ValueError(
                f"frame has {len(pcm48)} samples; tier {self.tier.name} takes {self.frame_samples}"
            )
        payload = self.encoder.encode(pcm48)
        if self._block.k == 0:
            self._block_ts = self._ts
        try:
            esi = self._block.add(payload)
        except ValueError:
            self.stats.frames_dropped += 1
            self._ts = (self._ts + self.tier.frame_ms) & 0xFFFF_FFFF
            return []
        out = [self._packet(False, self._ts, esi, payload)]
        self.stats.source_packets += 1
        self.tiers_used[self.tier.name] = self.tiers_used.get(self.tier.name, 0) + 1
        self._ts = (self._ts + self.tier.frame_ms) & 0xFFFF_FFFF
        if self._block.k >= self.tier.k:
            out.extend(self.close_block())
        return out

    def close_block(self) -> list[bytes]:
        """Send the open block's repairs now (block full, tier switch or PTT release)."""
        if self._block.k == 0:
            return []
        k = self._block.k
        bodies = self._block.repair_bodies(self.tier.profile.fec_ratio)
        out = [self._packet(True, self._block_ts, k + i, body) for i, body in enumerate(bodies)]
        self.stats.repair_packets += len(out)
        self.stats.blocks += 1
        self._block = BlockEncoder(self.backend)
        self._block_id = (self._block_id + 1) & 0xFF
        self._apply_pending()
        return out

    def keepalive(self) -> bytes:
        """An empty-payload packet, to carry a report while no audio is sent."""
        self.stats.keepalives += 1
        return self._packet(False, self._ts, KEEPALIVE_SYMBOL, b"", block=self._block_id - 1)

    def _apply_pending(self) -> None:
        if self._pending is not None and self._pending != self.tier:
            self.tier = self._pending
            self.encoder.configure(self.tier)
            self.stats.tier_changes += 1
        self._pending = None

    def _packet(
        self, repair: bool, ts: int, symbol: int, body: bytes, block: int | None = None
    ) -> bytes:
        report = self._report
        if report is not None:
            self._report_copies -= 1
            if self._report_copies <= 0:
                self._report = None
        header = MediaHeader(
            is_repair=repair,
            codec=int(self.tier.codec),
            has_report=report is not None,
            ratio_e=encode_ratio(self.tier.profile.fec_ratio),
            seq=self._seq,
            ts=ts,
            block=(self._block_id if block is None else block) & 0xFF,
            symbol=symbol,
            stream=self.stream,
            epoch=self.crypto.epoch if self.crypto is not None else 0,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        if self.crypto is not None:
            data = self.crypto.seal(header, body, report)
        else:
            data = build_datagram(header, body, report)
        self.stats.bytes += len(data)
        return data
