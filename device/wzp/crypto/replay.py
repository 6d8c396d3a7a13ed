"""The 1 024-packet sliding replay window over the 16-bit seq (SPEC 6.5).

Apply it only to packets whose tag has verified: a forged packet must never move
the window.
"""

from __future__ import annotations

WINDOW = 1024
_SEQ_MOD = 1 << 16
_HALF = 1 << 15


class ReplayWindow:
    """Accepts each seq once; refuses a seq at or behind the window's trailing edge.

    The newest seq seen is the window's head; the window covers the ``WINDOW``
    sequence numbers ending at the head. Sequence numbers compare with 16-bit serial
    arithmetic, so the counter wraps.
    """

    __slots__ = ("_bits", "_head")

    def __init__(self) -> None:
        self._head: int | None = None
        self._bits = 0  # bit i set: seq (head - i) seen

    def check(self, seq: int) -> bool:
        """Would ``seq`` be accepted? Does not change the window."""
        return self._classify(seq) is not None

    def accept(self, seq: int) -> bool:
        """Record ``seq``; True when it is new and inside the window (the packet may be used)."""
        shift = self._classify(seq)
        if shift is None:
            return False
        if shift > 0:  # ahead of the head: slide
            self._bits = ((self._bits << shift) | 1) & ((1 << WINDOW) - 1)
            self._head = seq & 0xFFFF
        else:
            self._bits |= 1 << -shift
        return True

    def _classify(self, seq: int) -> int | None:
        """None: refuse. >0: seq is that far ahead of the head. <=0: -offset behind, unseen."""
        if self._head is None:
            return WINDOW  # first packet: empty window, slide fully
        delta = (seq - self._head) % _SEQ_MOD
        if delta == 0:
            return None
        if delta < _HALF:
            return delta
        behind = _SEQ_MOD - delta
        if behind >= WINDOW:
            return None
        if self._bits >> behind & 1:
            return None
        return -behind
