"""FEC blocks (SPEC 2): source symbols, per-block symbol size T, ``K || symbol`` repair bodies.

Sender side: :class:`BlockEncoder` collects the source payloads of one block (they go
out the moment they are encoded) and, when the block closes, returns the repair
bodies. Receiver side: :class:`BlockDecoder` gathers what arrived of one block and
recovers missing source payloads once ``K`` distinct symbols are present; it never
holds back a source payload. Both are pure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..proto.f32 import repair_count
from .backend import FecBackend, default_backend

#: SPEC 2: payloads longer than this are never produced (T then stays <= 1 200).
MAX_PAYLOAD = 1198
MAX_SYMBOL_SIZE = 1200
_LEN = struct.Struct("<H")


class FecError(ValueError):
    """A repair packet or source payload that cannot belong to a valid block."""


def symbol_size_for(payload_lengths: list[int] | tuple[int, ...]) -> int:
    """Smallest multiple of 8 holding the longest payload plus its 2-byte length, >= 8."""
    longest = max(payload_lengths, default=0)
    if longest > MAX_PAYLOAD:
        raise FecError(f"payload of {longest} bytes exceeds {MAX_PAYLOAD}")
    return max(8, (longest + 2 + 7) // 8 * 8)


def pack_symbol(payload: bytes, symbol_size: int) -> bytes:
    """``length u16 LE || payload || zero padding to T``."""
    if len(payload) + 2 > symbol_size:
        raise FecError(f"payload of {len(payload)} bytes does not fit symbol size {symbol_size}")
    return _LEN.pack(len(payload)) + payload + bytes(symbol_size - 2 - len(payload))


def unpack_symbol(symbol: bytes) -> bytes:
    """The payload of a source symbol; :class:`FecError` when its length field overflows."""
    if len(symbol) < 2:
        raise FecError("symbol shorter than its length field")
    (n,) = _LEN.unpack_from(symbol, 0)
    if n + 2 > len(symbol):
        raise FecError(f"symbol length field {n} overflows a {len(symbol)}-byte symbol")
    return bytes(symbol[2 : 2 + n])


@dataclass
class BlockEncoder:
    """One block on the sending side. ``add`` the payloads, then ``repair_bodies``."""

    backend: FecBackend = field(default_factory=default_backend)
    payloads: list[bytes] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.payloads)

    def add(self, payload: bytes) -> int:
        """Add the next source payload; returns its ESI (its index in the block)."""
        if len(payload) > MAX_PAYLOAD:
            raise FecError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if len(self.payloads) >= 255:
            raise FecError("a block holds at most 255 source symbols")
        self.payloads.append(bytes(payload))
        return len(self.payloads) - 1

    def repair_bodies(self, ratio: float) -> list[bytes]:
        """Plaintext bodies ``K || symbol`` of the block's R = ceil(f32(K) * f32(ratio)) repairs.

        Their ESIs are K .. K+R-1, in list order.
        """
        k = self.k
        if k == 0:
            return []
        r = repair_count(k, ratio)
        if r == 0:
            return []
        if k + r - 1 > 255:
            r = 256 - k  # the header's symbol byte holds ESIs up to 255
        t = symbol_size_for([len(p) for p in self.payloads])
        block = b"".join(pack_symbol(p, t) for p in self.payloads)
        prefix = bytes((k,))
        return [prefix + s for s in self.backend.encode_repair(block, k, t, k, r)]


def parse_repair_body(body: bytes) -> tuple[int, bytes]:
    """(K, symbol) of a repair body; :class:`FecError` for an impossible one."""
    if len(body) < 9:
        raise FecError(f"repair body of {len(body)} bytes is too short")
    k = body[0]
    t = len(body) - 1
    if k == 0:
        raise FecError("repair body announces K=0")
    if t % 8 or t > MAX_SYMBOL_SIZE:
        raise FecError(f"repair symbol size {t} is not a multiple of 8 up to {MAX_SYMBOL_SIZE}")
    return k, body[1:]


@dataclass
class BlockDecoder:
    """What arrived of one block (one sender stream, one block id)."""

    backend: FecBackend = field(default_factory=default_backend)
    sources: dict[int, bytes] = field(default_factory=dict)
    repairs: dict[int, bytes] = field(default_factory=dict)
    k: int | None = None
    symbol_size: int | None = None
    #: ESIs recovered by decoding (already handed out)
    recovered: set[int] = field(default_factory=set)
    done: bool = False

    def add_source(self, esi: int, payload: bytes) -> bool:
        """Record a source payload; False when it is a duplicate or cannot belong here."""
        if esi in self.sources or len(payload) > MAX_PAYLOAD:
            return False
        if self.k is not None and esi >= self.k:
            return False
        if self.symbol_size is not None and len(payload) + 2 > self.symbol_size:
            return False
        self.sources[esi] = bytes(payload)
        return True

    def add_repair(self, esi: int, body: bytes) -> None:
        """Record a repair packet; :class:`FecError` when it contradicts the block."""
        k, symbol = parse_repair_body(body)
        if esi < k:
            raise FecError(f"repair ESI {esi} inside the source range 0..{k - 1}")
        if self.k is None:
            bad = [e for e, p in self.sources.items() if e >= k or len(p) + 2 > len(symbol)]
            if bad:
                raise FecError(f"repair announces K={k}, T={len(symbol)} but sources {bad} differ")
            self.k, self.symbol_size = k, len(symbol)
        elif (self.k, self.symbol_size) != (k, len(symbol)):
            raise FecError(
                f"repair announces K={k}, T={len(symbol)}; block has K={self.k}, "
                f"T={self.symbol_size}"
            )
        self.repairs.setdefault(esi, bytes(symbol))

    @property
    def missing(self) -> list[int]:
        if self.k is None:
            return []
        return [i for i in range(self.k) if i not in self.sources and i not in self.recovered]

    def try_recover(self) -> dict[int, bytes]:
        """Missing source payloads by ESI, once K distinct symbols are here; else ``{}``.

        Decoding runs only when a source is missing and enough symbols are present,
        so a complete block never costs a decode and never waits.
        """
        if self.done or self.k is None or self.symbol_size is None:
            return {}
        missing = self.missing
        if not missing:
            self.done = True
            return {}
        k, t = self.k, self.symbol_size
        if len(self.sources) + len(self.repairs) < k:
            return {}
        symbols = {esi: pack_symbol(p, t) for esi, p in self.sources.items()}
        symbols.update(self.repairs)
        block = self.backend.decode(k, t, symbols)
        if block is None:
            return {}
        out: dict[int, bytes] = {}
        for esi in missing:
            try:
                out[esi] = unpack_symbol(block[esi * t : (esi + 1) * t])
            except FecError:
                continue  # a corrupt length field in a decoded symbol: that frame stays lost
        self.recovered.update(out)
        self.done = True
        return out
