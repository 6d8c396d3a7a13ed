"""Device identity (SPEC 5): a 32-byte seed -> Ed25519 signing key, X25519 static key.

The seed is the only secret. It is never logged and never shown; :class:`Identity`
keeps it out of ``repr``. Storing it is the edge's job (:mod:`wzp.daemon.identity_store`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult_base
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

SEED_LEN = 32
FINGERPRINT_LEN = 16

ED25519_INFO = b"warzone-ed25519"
X25519_INFO = b"warzone-x25519"


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` (none = zeros), then expand."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def fingerprint(ed25519_pub: bytes) -> bytes:
    """SPEC 5.2: first 16 bytes of SHA-256 of the Ed25519 public key."""
    if len(ed25519_pub) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return hashlib.sha256(ed25519_pub).digest()[:FINGERPRINT_LEN]


def fingerprint_text(fp: bytes) -> str:
    """Eight groups of four lowercase hex digits joined by ``:``."""
    if len(fp) != FINGERPRINT_LEN:
        raise ValueError("a fingerprint has 16 bytes")
    h = fp.hex()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


_FP_RE = re.compile(r"[0-9a-f]{32}")


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint from configuration: 32 hex digits, with or without ``:``."""
    cleaned = text.strip().lower().replace(":", "")
    if not _FP_RE.fullmatch(cleaned):
        raise ValueError(
            f"not a fingerprint: {text!r} (expected 32 hex digits, optionally grouped by ':')"
        )
    return bytes.fromhex(cleaned)


@dataclass(frozen=True)
class Identity:
    """Keys derived from a seed. ``repr`` never shows secret material."""

    _seed: bytes = field(repr=False)
    signing_key: SigningKey = field(init=False, repr=False)
    x25519_secret: bytes = field(init=False, repr=False)
    ed25519_pub: bytes = field(init=False)
    x25519_pub: bytes = field(init=False)
    fingerprint: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self._seed) != SEED_LEN:
            raise ValueError(f"an identity seed has {SEED_LEN} bytes")
        sk = SigningKey(hkdf_sha256(self._seed, ED25519_INFO))
        x_secret = hkdf_sha256(self._seed, X25519_INFO)
        set_ = object.__setattr__
        set_(self, "signing_key", sk)
        set_(self, "x25519_secret", x_secret)
        set_(self, "ed25519_pub", bytes(sk.verify_key))
        set_(self, "x25519_pub", crypto_scalarmult_base(x_secret))
        set_(self, "fingerprint", fingerprint(bytes(sk.verify_key)))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(bytes(seed))

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(SEED_LEN))

    @property
    def fingerprint_text(self) -> str:
        return fingerprint_text(self.fingerprint)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def seed_bytes(self) -> bytes:
        """The secret seed, for writing the seed file only."""
        return self._seed


def verify(ed25519_pub: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``; never raises."""
    if len(ed25519_pub) != 32 or len(signature) != 64:
        return False
    try:
        VerifyKey(ed25519_pub).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    except Exception:  # libsodium rejects some malformed points with other errors
        return False
    return True
