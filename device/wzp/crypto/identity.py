"""Device identity (SPEC 5): a 32-byte seed -> Ed25519 signing key, X25519 static key.

The seed is the only secret. It is never logged and never shown; :class:`Identity`
keeps it out of ``repr``. The seed file is written atomically with mode 0600 (the
only piece of this package that touches the file system, kept apart in
:func:`load_or_create_seed` so the key derivation stays pure).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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


class SeedFileError(Exception):
    """The seed file exists but cannot be used (wrong size, unreadable, too open)."""


def load_seed(path: Path) -> bytes:
    """Read a seed file; refuse one with the wrong size or readable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot stat: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise SeedFileError(
            f"{path}: mode {st.st_mode & 0o777:04o} lets other users read the identity; "
            f"run: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) != SEED_LEN:
        raise SeedFileError(
            f"{path}: an identity seed file holds {SEED_LEN} bytes, not {len(data)}"
        )
    return data


def write_seed(path: Path, seed: bytes) -> None:
    """Write ``seed`` atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    if len(seed) != SEED_LEN:
        raise ValueError(f"an identity seed has {SEED_LEN} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".seed-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, seed)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create_seed(path: Path) -> tuple[Identity, bool]:
    """The identity stored at ``path``, creating it if missing. Returns (identity, created)."""
    try:
        return Identity.from_seed(load_seed(path)), False
    except FileNotFoundError:
        pass
    ident = Identity.generate()
    write_seed(path, ident.seed_bytes())
    return ident, True
