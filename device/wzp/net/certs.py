"""The endpoint's long-lived TLS certificate (SPEC 7), self-signed with its Ed25519 identity key.

Every endpoint presents one X.509 certificate whose key *is* the device identity's Ed25519
signing key (SPEC 5.1), so the peer learns the identity fingerprint (SPEC 5.2) from the TLS
handshake itself: :func:`fingerprint_of_certificate` recomputes it from any certificate.
TLS 1.3's CertificateVerify proves that the peer holds that key; no CA is involved.

The certificate is deterministic: the same identity always yields the same subject, serial
number, validity and extensions, and Ed25519 signatures are deterministic, so it comes out
byte-for-byte identical across restarts (nothing needs storing). Validity runs from
2020-01-01 to 2100-01-01, so a device with a wrong clock still accepts and presents it.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from wzp.crypto.identity import Identity, fingerprint

__all__ = [
    "NOT_VALID_AFTER",
    "NOT_VALID_BEFORE",
    "CertificateKeyError",
    "fingerprint_of_certificate",
    "identity_private_key",
    "make_certificate",
]

NOT_VALID_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
NOT_VALID_AFTER = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


class CertificateKeyError(ValueError):
    """A certificate whose public key is not an Ed25519 key (not a wzp endpoint's)."""


def identity_private_key(identity: Identity) -> ed25519.Ed25519PrivateKey:
    """The identity's Ed25519 signing key as a ``cryptography`` private key.

    PyNaCl's ``bytes(SigningKey)`` is the 32-byte RFC 8032 seed, which is exactly what
    ``Ed25519PrivateKey.from_private_bytes`` takes; the public keys are checked to agree.
    """
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key))
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if pub != identity.ed25519_pub:  # pragma: no cover - would mean a PyNaCl change
        raise RuntimeError("the Ed25519 key rebuilt from the identity does not match it")
    return key


def make_certificate(
    identity: Identity,
) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """The identity's self-signed certificate and the matching private key.

    Subject = issuer = ``CN=<fingerprint text>, O=wzp``; the serial number is taken from
    the fingerprint (positive, < 2**127), so it is the same on every run.
    """
    key = identity_private_key(identity)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, identity.fingerprint_text),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wzp"),
        ]
    )
    serial = int.from_bytes(identity.fingerprint, "big") >> 1 or 1
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(NOT_VALID_BEFORE)
        .not_valid_after(NOT_VALID_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, algorithm=None)  # Ed25519 signs the message itself: no hash
    )
    return cert, key


def fingerprint_of_certificate(cert: x509.Certificate | bytes | bytearray | memoryview) -> bytes:
    """SPEC 5.2 fingerprint (16 bytes) of a certificate's Ed25519 public key.

    ``cert`` is a ``cryptography`` certificate or its DER bytes. Raises
    :class:`CertificateKeyError` when the key is not Ed25519 and ``ValueError`` when the DER
    does not parse.
    """
    if not isinstance(cert, x509.Certificate):
        cert = x509.load_der_x509_certificate(bytes(cert))
    try:
        public = cert.public_key()
    except Exception as exc:  # unsupported algorithm or malformed key
        raise CertificateKeyError(f"certificate key cannot be read: {exc}") from exc
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise CertificateKeyError(
            f"certificate key is {type(public).__name__}, not Ed25519: not a wzp identity"
        )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return fingerprint(raw)
