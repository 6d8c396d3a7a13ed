from __future__ import annotations

import pytest

from wzp.crypto.identity import Identity, fingerprint_text, parse_fingerprint, verify

from ..vectors import load


def test_identity_vectors() -> None:
    cases = load("identity")["cases"]
    assert len(cases) == 5
    for case in cases:
        ident = Identity.from_seed(bytes.fromhex(case["seed"]))
        assert ident.ed25519_pub.hex() == case["ed25519_pub"]
        assert ident.x25519_pub.hex() == case["x25519_pub"]
        assert ident.fingerprint.hex() == case["fingerprint"]
        assert ident.fingerprint_text == case["fingerprint_text"]
        # both written forms parse back to the same bytes
        assert parse_fingerprint(case["fingerprint_text"]) == ident.fingerprint
        assert parse_fingerprint(case["fingerprint"].upper()) == ident.fingerprint


def test_repr_never_shows_secrets() -> None:
    seed = bytes(range(32))
    ident = Identity.from_seed(seed)
    text = repr(ident) + str(ident)
    assert seed.hex() not in text
    assert repr(seed) not in text
    assert "x25519_secret" not in text and "signing_key" not in text


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "518e:b935:62fa:9e34:e59c:28b6:7fc2:d38",
        "zz" * 16,
        "518eb93562fa9e34e59c28b67fc2d38400",
    ],
)
def test_bad_fingerprints_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a fingerprint"):
        parse_fingerprint(bad)
    with pytest.raises(ValueError):
        fingerprint_text(b"\x00" * 15)


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"hello")
    assert verify(ident.ed25519_pub, b"hello", sig)
    assert not verify(ident.ed25519_pub, b"hellO", sig)
    assert not verify(ident.ed25519_pub, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify(b"\x00" * 32, b"hello", sig)
    assert not verify(b"\xff" * 32, b"hello", sig)  # not a curve point
    assert not verify(ident.ed25519_pub[:31], b"hello", sig)
    assert not verify(ident.ed25519_pub, b"hello", sig[:63])
