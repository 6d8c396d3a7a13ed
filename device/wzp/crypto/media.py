"""Media encryption (SPEC 6.3-6.6): ChaCha20-Poly1305 with the header-derived nonce.

:class:`MediaCrypto` is one side of a call's media keys. It seals outgoing packets
under the current epoch's own-role key, opens incoming ones under the peer role's
key of the epoch named in the header, applies the replay window per (stream, epoch)
after the tag verifies, keeps the previous epoch's receive key for 2 s after a
rekey, and says when a rekey is due. Time is an explicit ``now`` in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..proto.header import HEADER_LEN, Datagram, Drop, DropReason, MediaHeader, QualityReport
from .handshake import EpochKeys, Role
from .replay import ReplayWindow

#: SPEC 6.6: the caller starts a rekey after this many packets in either direction...
REKEY_PACKETS = 1 << 15
#: ... or after this long, whichever comes first.
REKEY_SECONDS = 600.0
#: A receiver keeps the previous epoch's key this long after switching.
OLD_KEY_GRACE_S = 2.0
#: Hard stop: a key never seals more packets than seq can count (no nonce reuse).
MAX_PACKETS_PER_KEY = 1 << 16


def nonce_for(header: bytes) -> bytes:
    """SPEC 6.4: header bytes 2..11 || (byte0 AND 0x40) || 0x00."""
    return bytes(header[2:HEADER_LEN]) + bytes((header[0] & 0x40, 0))


class KeyExhausted(Exception):
    """The current key has sealed as many packets as it may; a rekey is overdue."""


@dataclass
class _RecvEpoch:
    generation: int
    aead: ChaCha20Poly1305
    expires_at: float | None = None  # None: no newer epoch from the peer yet
    first_at: float | None = None  # first packet the peer sent under this epoch


class MediaCrypto:
    """One side's media keys for a call (pure: explicit ``now``, no I/O)."""

    def __init__(self, role: Role, keys: EpochKeys, now: float) -> None:
        self.role = role
        self._keys = keys
        self._send = ChaCha20Poly1305(keys.send_key(role))
        self._recv: dict[int, _RecvEpoch] = {
            keys.generation & 0xFF: _RecvEpoch(
                keys.generation, ChaCha20Poly1305(keys.recv_key(role))
            )
        }
        self._replay: dict[tuple[int, int], ReplayWindow] = {}
        self._epoch_started = now
        self.sealed_in_epoch = 0
        self.opened_in_epoch = 0
        self._pending: EpochKeys | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._keys.generation

    @property
    def epoch(self) -> int:
        """The header epoch byte of packets sealed now."""
        return self._keys.generation & 0xFF

    @property
    def keys(self) -> EpochKeys:
        return self._keys

    def rekey_due(self, now: float) -> bool:
        return (
            self.sealed_in_epoch >= REKEY_PACKETS
            or self.opened_in_epoch >= REKEY_PACKETS
            or now - self._epoch_started >= REKEY_SECONDS
        )

    def install(self, new_keys: EpochKeys, now: float, switch_send: bool = True) -> None:
        """Add the next epoch's keys.

        Its receive key works at once. Sending switches now (``switch_send``), or, for
        the side that answered a rekey, as soon as the first packet under the new epoch
        arrives from the peer: proof that the peer holds the new keys, so nothing this
        side sends is undecryptable on the way (SPEC 6.6 switches on holding both public
        keys, which on a lossy 600 ms link leaves the initiator deaf until the answering
        Rekey gets through). The previous receive key lives until 2 s after the peer's
        first packet under the new epoch.
        """
        newest = self._pending or self._keys
        if new_keys.generation != newest.generation + 1:
            raise ValueError(
                f"rekey must advance one generation ({newest.generation} -> {new_keys.generation})"
            )
        self._recv[new_keys.generation & 0xFF] = _RecvEpoch(
            new_keys.generation, ChaCha20Poly1305(new_keys.recv_key(self.role))
        )
        self._pending = new_keys
        if switch_send:
            self._switch_send(now)
        self.expire(now)

    def _switch_send(self, now: float) -> None:
        new_keys = self._pending
        if new_keys is None:
            return
        self._pending = None
        self._keys = new_keys
        self._send = ChaCha20Poly1305(new_keys.send_key(self.role))
        self._epoch_started = now
        self.sealed_in_epoch = 0
        self.opened_in_epoch = 0

    @property
    def switch_pending(self) -> bool:
        """New keys are installed but sending waits for the peer's first new packet."""
        return self._pending is not None

    def expire(self, now: float) -> None:
        """Drop receive keys (and their replay windows) whose grace period has passed."""
        for epoch_byte, rx in list(self._recv.items()):
            if rx.expires_at is not None and now >= rx.expires_at:
                del self._recv[epoch_byte]
                for key in [k for k in self._replay if k[1] == epoch_byte]:
                    del self._replay[key]

    # -- packets -------------------------------------------------------------------------------

    def seal(self, header: MediaHeader, plaintext: bytes, report: QualityReport | None) -> bytes:
        """The datagram ``header || ciphertext+tag || report`` under the current epoch.

        ``header.epoch`` must be this epoch's byte and its Q bit must match ``report``.
        """
        if header.epoch != self.epoch:
            raise ValueError(f"header epoch {header.epoch} is not the current epoch {self.epoch}")
        if header.has_report != (report is not None):
            raise ValueError("header Q bit and report presence disagree")
        if self.sealed_in_epoch >= MAX_PACKETS_PER_KEY:
            raise KeyExhausted("the media key sealed 65 536 packets; rekey first")
        hdr = header.encode()
        rep = report.encode() if report is not None else b""
        body = self._send.encrypt(nonce_for(hdr), plaintext, hdr + rep)
        self.sealed_in_epoch += 1
        return hdr + body + rep

    def open(self, datagram: Datagram, now: float) -> bytes | Drop:
        """The plaintext of a parsed datagram, or the counted reason it is dropped."""
        hdr = datagram.header
        rx = self._recv.get(hdr.epoch)
        if rx is None or (rx.expires_at is not None and now >= rx.expires_at):
            return Drop(DropReason.UNKNOWN_EPOCH, f"epoch {hdr.epoch}")
        header_bytes = datagram.aad[:HEADER_LEN]
        try:
            plaintext = rx.aead.decrypt(nonce_for(header_bytes), datagram.body, datagram.aad)
        except InvalidTag:
            return Drop(DropReason.BAD_TAG)
        window = self._replay.get((hdr.stream, hdr.epoch))
        if window is None:
            window = self._replay[(hdr.stream, hdr.epoch)] = ReplayWindow()
        if not window.accept(hdr.seq):
            return Drop(DropReason.REPLAY, f"seq {hdr.seq}")
        if rx.generation > self._keys.generation or rx.first_at is None:
            self._peer_switched(rx, now)
        if rx.generation == self._keys.generation:
            self.opened_in_epoch += 1
        return plaintext

    def _peer_switched(self, rx: _RecvEpoch, now: float) -> None:
        """The peer sends under ``rx``'s epoch: older receive keys get their 2 s grace."""
        if rx.first_at is None:
            rx.first_at = now
            for other in self._recv.values():
                if other.generation < rx.generation and other.expires_at is None:
                    other.expires_at = now + OLD_KEY_GRACE_S
        if self._pending is not None and rx.generation == self._pending.generation:
            self._switch_send(now)
