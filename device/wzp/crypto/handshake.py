"""Call handshake key material (SPEC 6.1, 6.2, 6.6) and the relay Join signature (SPEC 8.2).

Pure functions over bytes. The caller of these functions (the call engine) decides
when to run them; nothing here reads a clock or a socket.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from enum import Enum

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import RuntimeError as NaclRuntimeError

from .identity import FINGERPRINT_LEN, Identity, fingerprint, hkdf_sha256, verify

SESSION_INFO = b"warzone-session-key"
REKEY_INFO = b"warzone-rekey"
CALLER_INFO = b"wzp media caller"
CALLEE_INFO = b"wzp media callee"
CALL_ID_LEN = 16


class HandshakeError(Exception):
    """A handshake step failed; ``reason`` is short and safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Role(Enum):
    CALLER = "caller"
    CALLEE = "callee"

    @property
    def peer(self) -> Role:
        return Role.CALLEE if self is Role.CALLER else Role.CALLER


@dataclass(frozen=True)
class Ephemeral:
    """A fresh X25519 key pair for one call or one rekey."""

    secret: bytes = field(repr=False)
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("an X25519 secret has 32 bytes")
        object.__setattr__(self, "public", crypto_scalarmult_base(self.secret))

    @classmethod
    def generate(cls) -> Ephemeral:
        return cls(secrets.token_bytes(32))


def new_call_id() -> bytes:
    return secrets.token_bytes(CALL_ID_LEN)


# -- what is signed ---------------------------------------------------------------------------


def offer_signed_bytes(ephemeral_pub: bytes, callee_fingerprint: bytes) -> bytes:
    _check_len("callee fingerprint", callee_fingerprint, FINGERPRINT_LEN)
    return ephemeral_pub + callee_fingerprint + b"call-offer"


def answer_signed_bytes(ephemeral_pub: bytes, caller_fingerprint: bytes) -> bytes:
    _check_len("caller fingerprint", caller_fingerprint, FINGERPRINT_LEN)
    return ephemeral_pub + caller_fingerprint + b"call-answer"


def rekey_signed_bytes(new_ephemeral_pub: bytes, call_id: bytes) -> bytes:
    _check_len("call id", call_id, CALL_ID_LEN)
    return new_ephemeral_pub + call_id + b"rekey"


def join_signed_bytes(relay_fingerprint: bytes, room: str) -> bytes:
    _check_len("relay fingerprint", relay_fingerprint, FINGERPRINT_LEN)
    return b"wzp-join" + relay_fingerprint + room.encode("utf-8")


def sign_offer(me: Identity, ephemeral: Ephemeral, callee_fingerprint: bytes) -> bytes:
    return me.sign(offer_signed_bytes(ephemeral.public, callee_fingerprint))


def sign_answer(me: Identity, ephemeral: Ephemeral, caller_fingerprint: bytes) -> bytes:
    return me.sign(answer_signed_bytes(ephemeral.public, caller_fingerprint))


def sign_rekey(me: Identity, ephemeral: Ephemeral, call_id: bytes) -> bytes:
    return me.sign(rekey_signed_bytes(ephemeral.public, call_id))


def sign_join(me: Identity, relay_fingerprint: bytes, room: str) -> bytes:
    return me.sign(join_signed_bytes(relay_fingerprint, room))


def verify_offer(
    caller_identity_pub: bytes, ephemeral_pub: bytes, signature: bytes, me: Identity
) -> None:
    """Raise :class:`HandshakeError` unless the offer is signed for *this* callee."""
    if not verify(
        caller_identity_pub, offer_signed_bytes(ephemeral_pub, me.fingerprint), signature
    ):
        raise HandshakeError("bad-signature")


def verify_answer(
    callee_identity_pub: bytes, ephemeral_pub: bytes, signature: bytes, me: Identity
) -> None:
    """Raise :class:`HandshakeError` unless the answer is signed for *this* caller."""
    msg = answer_signed_bytes(ephemeral_pub, me.fingerprint)
    if not verify(callee_identity_pub, msg, signature):
        raise HandshakeError("bad-signature")


def verify_rekey(
    peer_identity_pub: bytes, new_pub: bytes, signature: bytes, call_id: bytes
) -> None:
    if not verify(peer_identity_pub, rekey_signed_bytes(new_pub, call_id), signature):
        raise HandshakeError("bad-signature")


def verify_join(identity_pub: bytes, relay_fingerprint: bytes, room: str, signature: bytes) -> None:
    if not verify(identity_pub, join_signed_bytes(relay_fingerprint, room), signature):
        raise HandshakeError("bad-signature")


# -- key derivation ---------------------------------------------------------------------------


def x25519_shared(own_secret: bytes, peer_public: bytes) -> bytes:
    """X25519, refusing the all-zero result of a low-order peer key (SPEC 6.2)."""
    _check_len("X25519 public key", peer_public, 32)
    try:
        shared = crypto_scalarmult(own_secret, peer_public)
    except NaclRuntimeError:  # libsodium itself refuses an all-zero result
        raise HandshakeError("low-order-key") from None
    if shared == bytes(32):
        raise HandshakeError("low-order-key")
    return shared


def session_key(shared: bytes) -> bytes:
    return hkdf_sha256(shared, SESSION_INFO)


def direction_keys(session: bytes, caller_pub: bytes, callee_pub: bytes) -> tuple[bytes, bytes]:
    """(k_caller, k_callee): salt SHA-256(caller ephemeral || callee ephemeral) (SPEC 6.2)."""
    salt = hashlib.sha256(caller_pub + callee_pub).digest()
    return (
        hkdf_sha256(session, CALLER_INFO, salt=salt),
        hkdf_sha256(session, CALLEE_INFO, salt=salt),
    )


def rekey_session_key(current_session: bytes, new_shared: bytes) -> bytes:
    """SPEC 6.6: HKDF(salt = current session key, IKM = new shared secret, 'warzone-rekey')."""
    return hkdf_sha256(new_shared, REKEY_INFO, salt=current_session)


@dataclass(frozen=True)
class EpochKeys:
    """The keys of one key epoch: the session key and both direction keys."""

    generation: int
    session: bytes = field(repr=False)
    k_caller: bytes = field(repr=False)
    k_callee: bytes = field(repr=False)

    def send_key(self, role: Role) -> bytes:
        return self.k_caller if role is Role.CALLER else self.k_callee

    def recv_key(self, role: Role) -> bytes:
        return self.k_callee if role is Role.CALLER else self.k_caller


def initial_keys(own: Ephemeral, peer_pub: bytes, role: Role) -> EpochKeys:
    """Epoch 0 keys of a call from this side's ephemeral and the peer's public key."""
    shared = x25519_shared(own.secret, peer_pub)
    session = session_key(shared)
    caller_pub, callee_pub = (
        (own.public, peer_pub) if role is Role.CALLER else (peer_pub, own.public)
    )
    k_caller, k_callee = direction_keys(session, caller_pub, callee_pub)
    return EpochKeys(0, session, k_caller, k_callee)


def next_epoch_keys(
    current: EpochKeys, own_new: Ephemeral, peer_new_pub: bytes, role: Role
) -> EpochKeys:
    """The keys after a rekey (SPEC 6.6): generation + 1."""
    shared = x25519_shared(own_new.secret, peer_new_pub)
    session = rekey_session_key(current.session, shared)
    if role is Role.CALLER:
        caller_pub, callee_pub = own_new.public, peer_new_pub
    else:
        caller_pub, callee_pub = peer_new_pub, own_new.public
    k_caller, k_callee = direction_keys(session, caller_pub, callee_pub)
    return EpochKeys(current.generation + 1, session, k_caller, k_callee)


def peer_fingerprint(identity_pub: bytes) -> bytes:
    return fingerprint(identity_pub)


def _check_len(what: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{what} must have {n} bytes, got {len(value)}")
