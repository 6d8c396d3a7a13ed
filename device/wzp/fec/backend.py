"""RaptorQ backends: the ``raptorq`` package when it imports, else the pure RFC 6330 code.

Both compute the same bytes (proven in ``tests/fec/test_rfc6330.py``). A backend
works on one source block of ``k`` symbols of ``symbol_size`` bytes, with no
sub-blocking: exactly what SPEC 2 puts on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_ESI = (1 << 24) - 1


class FecBackend(Protocol):
    name: str

    def encode_repair(
        self, source_block: bytes, k: int, symbol_size: int, first_esi: int, count: int
    ) -> list[bytes]:
        """Repair symbols ``first_esi .. first_esi+count-1`` (``first_esi >= k``)."""
        ...

    def decode(self, k: int, symbol_size: int, symbols: Mapping[int, bytes]) -> bytes | None:
        """The ``k * symbol_size`` source block, or None when the symbols do not determine it."""
        ...


class BackendPanic(Exception):
    """The native backend panicked on this input; the block is treated as undecodable."""


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit)


class RaptorqBackend:
    """The ``raptorq`` package (a Rust extension). Its panics are contained here.

    ``raptorq`` raises a pyo3 ``PanicException``, derived from ``BaseException``, on
    input it does not expect; that must never escape into a receive loop.
    """

    name = "raptorq"

    def __init__(self, module: Any) -> None:
        self._rq = module
        self.panics = 0

    def encode_repair(
        self, source_block: bytes, k: int, symbol_size: int, first_esi: int, count: int
    ) -> list[bytes]:
        _check_block(source_block, k, symbol_size)
        if first_esi < k or count < 0 or first_esi + count - 1 > MAX_ESI:
            raise ValueError("repair ESIs must lie in k .. 2**24-1")
        if count == 0:
            return []
        extra = first_esi - k
        try:
            encoder = self._rq.Encoder.with_defaults(source_block, symbol_size)
            packets = encoder.get_encoded_packets(extra + count)
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            self.panics += 1
            raise BackendPanic(f"raptorq encoder failed: {type(exc).__name__}") from None
        repairs = packets[k + extra : k + extra + count]
        return [bytes(p[4:]) for p in repairs]

    def decode(self, k: int, symbol_size: int, symbols: Mapping[int, bytes]) -> bytes | None:
        _check_symbols(k, symbol_size, symbols)
        if len(symbols) < k:
            return None
        try:
            decoder = self._rq.Decoder.with_defaults(k * symbol_size, symbol_size)
            result = None
            for esi, sym in symbols.items():
                result = decoder.decode(bytes((0,)) + esi.to_bytes(3, "big") + bytes(sym))
                if result is not None:
                    break
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            self.panics += 1
            log.warning("raptorq decoder failed (%s); block dropped", type(exc).__name__)
            return None
        return bytes(result) if result is not None else None


class PureBackend:
    """The pure-Python/numpy RFC 6330 codec in :mod:`wzp.fec.rfc6330`."""

    name = "pure"

    def encode_repair(
        self, source_block: bytes, k: int, symbol_size: int, first_esi: int, count: int
    ) -> list[bytes]:
        from . import rfc6330

        return rfc6330.encode_repair(source_block, k, symbol_size, first_esi, count)

    def decode(self, k: int, symbol_size: int, symbols: Mapping[int, bytes]) -> bytes | None:
        from . import rfc6330

        return rfc6330.decode(k, symbol_size, symbols)


def _check_block(source_block: bytes, k: int, symbol_size: int) -> None:
    if not 1 <= k <= 255:
        raise ValueError(f"k={k} outside 1..255")
    if symbol_size < 8 or symbol_size % 8:
        raise ValueError(f"symbol size {symbol_size} is not a multiple of 8 >= 8")
    if len(source_block) != k * symbol_size:
        raise ValueError("source block is not k * symbol_size bytes")


def _check_symbols(k: int, symbol_size: int, symbols: Mapping[int, bytes]) -> None:
    if not 1 <= k <= 255:
        raise ValueError(f"k={k} outside 1..255")
    if symbol_size < 8 or symbol_size % 8:
        raise ValueError(f"symbol size {symbol_size} is not a multiple of 8 >= 8")
    for esi, sym in symbols.items():
        if not 0 <= esi <= MAX_ESI:
            raise ValueError(f"ESI {esi} out of range")
        if len(sym) != symbol_size:
            raise ValueError(f"symbol {esi} has {len(sym)} bytes, not {symbol_size}")


_default: FecBackend | None = None


def load_backend(prefer: str = "auto") -> FecBackend:
    """``auto``: the package if it imports, else pure; ``raptorq`` or ``pure`` to force one."""
    if prefer not in ("auto", "raptorq", "pure"):
        raise ValueError(f"unknown FEC backend {prefer!r} (auto, raptorq, pure)")
    if prefer in ("auto", "raptorq"):
        try:
            import raptorq
        except ImportError:
            if prefer == "raptorq":
                raise
        else:
            return RaptorqBackend(raptorq)
    return PureBackend()


def default_backend() -> FecBackend:
    global _default
    if _default is None:
        _default = load_backend("auto")
    return _default
