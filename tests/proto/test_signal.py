"""SPEC 3.2 / 3.3 signalling messages: exact encoding, lenient decoding, robustness."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wzp.proto import signal as sig
from wzp.proto.codecs import CodecId
from wzp.proto.framing import frame
from wzp.proto.profiles import CATASTROPHIC, DEGRADED, GOOD, PHASE1_PROFILES, Profile
from wzp.proto.signal import (
    CallAnswer,
    CallOffer,
    Error,
    Floor,
    Hangup,
    HangupReason,
    IceCandidate,
    Join,
    Participant,
    Ping,
    Pong,
    QualityUpdate,
    QualityUpdateReport,
    Rekey,
    Ringing,
    RoomUpdate,
    SignalError,
    UnknownMessage,
    decode,
    encode,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


SIGNAL = _load("signal.json")
JOIN = _load("join.json")
HANDSHAKE = _load("handshake.json")

# The "exact" cases of signal.json built from Python fields, in vector order.
EXACT_BUILT = [
    Ping(timestamp_ms=242702280205),
    Hangup(HangupReason.Normal),
    Hangup(HangupReason.Busy, call_id="597b6ede8c0a808a86f240ce35bf23b9"),
    Ringing(call_id="0f9de4434f26486ef7abba95514fc3e1"),
    QualityUpdate(
        report=QualityUpdateReport(loss_pct=25, rtt_4ms=75, jitter_ms=10, bitrate_cap_kbps=100),
        recommended_profile=DEGRADED,
    ),
    RoomUpdate(
        room="porch",
        you=2,
        participants=(
            Participant("cf3c4a8a97040443c233eb0fddd88dbd", "gate", 1),
            Participant("d1cfec1b32f11300153847b68ab6f27d", "porch", 2),
        ),
    ),
    Floor(slot=None),
    Error(code="not-allowed", message="fingerprint not on the allow list of room porch"),
]


def _outcome(data: bytes) -> Any:
    """decode(data), with SignalError returned instead of raised; anything else escapes."""
    try:
        return decode(data)
    except SignalError as e:
        assert str(e)
        return e


# ------------------------------------------------------------------------- vectors


def test_exact_built_matches_vector_count() -> None:
    assert len(EXACT_BUILT) == len(SIGNAL["exact"])


@pytest.mark.parametrize(
    ("case", "built"), list(zip(SIGNAL["exact"], EXACT_BUILT, strict=True)), ids=lambda x: ""
)
def test_exact_vectors(case: dict, built: Any) -> None:
    data = case["json"].encode("utf-8")
    msg = decode(data)
    assert msg == built
    assert encode(msg) == data  # json -> message -> json
    assert encode(built) == data  # fields -> json
    assert frame(encode(built)).hex() == case["frame"]


@pytest.mark.parametrize("case", SIGNAL["lenient"], ids=lambda c: c["input"][:30])
def test_lenient_vectors(case: dict) -> None:
    data = case["input"].encode("utf-8")
    expect: str = case["parses_as"]
    if expect.startswith("{"):
        msg = decode(data)
        assert msg == decode(expect.encode("utf-8"))
        assert encode(msg) == expect.encode("utf-8")
    elif expect.startswith("unknown message"):
        msg = decode(data)
        assert isinstance(msg, UnknownMessage)
        tree = json.loads(data)
        assert msg.name == (tree if isinstance(tree, str) else next(iter(tree)))
    else:
        assert expect.startswith("error for this message only:")
        with pytest.raises(SignalError) as ei:
            decode(data)
        text = str(ei.value)
        for word in expect.split(":", 1)[1].split():
            assert word in text, (word, text)


def test_unknown_message_names() -> None:
    assert decode(b'{"SomethingNew":{"x":1}}') == UnknownMessage("SomethingNew")
    assert decode(b'"Hold"') == UnknownMessage("Hold")
    assert decode(b'{"Hold":null}') == UnknownMessage("Hold")
    assert decode(b'{"Hold":[1,{"a":2,"a":3}]}') == UnknownMessage("Hold")
    assert decode(b'{"":{}}') == UnknownMessage("")


@pytest.mark.parametrize("case", JOIN["cases"], ids=lambda c: c["room"])
def test_join_vectors(case: dict) -> None:
    data = case["json"].encode("utf-8")
    msg = decode(data)
    assert isinstance(msg, Join)
    assert msg.room == case["room"]
    assert msg.signature == bytes.fromhex(case["signature"])
    assert encode(msg) == data
    built = Join(msg.identity_pub, case["room"], bytes.fromhex(case["signature"]), msg.alias)
    assert encode(built) == data


@pytest.mark.parametrize("case", HANDSHAKE["cases"], ids=lambda c: c["call_id"])
def test_handshake_vectors(case: dict) -> None:
    offer_json = case["offer_json"].encode("utf-8")
    answer_json = case["answer_json"].encode("utf-8")
    offer = decode(offer_json)
    answer = decode(answer_json)
    assert isinstance(offer, CallOffer)
    assert isinstance(answer, CallAnswer)
    assert encode(offer) == offer_json
    assert encode(answer) == answer_json
    assert frame(encode(offer)).hex().startswith(case["offer_frame_prefix"])

    assert offer.ephemeral_pub == bytes.fromhex(case["caller_ephemeral_pub"])
    assert offer.signature == bytes.fromhex(case["offer_signature"])
    assert offer.supported_profiles == PHASE1_PROFILES
    assert offer.call_id == case["call_id"]
    assert answer.ephemeral_pub == bytes.fromhex(case["callee_ephemeral_pub"])
    assert answer.signature == bytes.fromhex(case["answer_signature"])
    assert answer.chosen_profile == GOOD
    assert answer.call_id == case["call_id"]

    built_offer = CallOffer(
        identity_pub=offer.identity_pub,
        ephemeral_pub=bytes.fromhex(case["caller_ephemeral_pub"]),
        signature=bytes.fromhex(case["offer_signature"]),
        supported_profiles=[GOOD, DEGRADED, CATASTROPHIC],
        call_id=case["call_id"],
        alias=offer.alias,
    )
    assert encode(built_offer) == offer_json
    built_answer = CallAnswer(
        identity_pub=answer.identity_pub,
        ephemeral_pub=bytes.fromhex(case["callee_ephemeral_pub"]),
        signature=bytes.fromhex(case["answer_signature"]),
        chosen_profile=GOOD,
        call_id=case["call_id"],
    )
    assert encode(built_answer) == answer_json


# ------------------------------------------------------------------------- encoding details


def test_optional_fields_order_and_from_key() -> None:
    m = CallOffer(
        bytes(32),
        bytes(32),
        bytes(64),
        (),
        call_id="00" * 16,
        to="11" * 16,
        from_="22" * 16,
        alias="Zoë ☎",
    )
    text = encode(m).decode("utf-8")
    assert text.endswith(
        '"supported_profiles":[],"call_id":"'
        + "00" * 16
        + '","to":"'
        + "11" * 16
        + '","from":"'
        + "22" * 16
        + '","alias":"Zoë ☎"}}'
    )
    assert "Zoë ☎".encode() in encode(m)  # non-ASCII kept as UTF-8, not \u-escaped
    assert decode(encode(m)) == m


def test_string_escapes_match_serde_json() -> None:
    m = IceCandidate('a"b\\c\n\t\x01\x7f/\u2028')
    assert encode(m) == b'{"IceCandidate":{"candidate":"a\\"b\\\\c\\n\\t\\u0001\x7f/\xe2\x80\xa8"}}'
    assert decode(encode(m)) == m


def test_floats() -> None:
    p = Profile(CodecId.Opus16k, 0.1, 20, 6)
    q = QualityUpdate(QualityUpdateReport(0, 0, 0, 0), p)
    assert b'"fec_ratio":0.1,' in encode(q)
    assert b'"fec_ratio":2.0,' in encode(
        QualityUpdate(QualityUpdateReport(0, 0, 0, 0), p.with_ratio(2))
    )
    # a JSON integer is accepted where an f32 is expected, and written back with ".0"
    data = b'{"CallAnswer":{"identity_pub":[%s],"ephemeral_pub":[%s],"signature":[%s],' % (
        b",".join([b"0"] * 32),
        b",".join([b"0"] * 32),
        b",".join([b"0"] * 64),
    )
    data += b'"chosen_profile":{"codec":"Codec2_1200","fec_ratio":1,"frame_duration_ms":40,'
    data += b'"frames_per_block":8}}}'
    msg = decode(data)
    assert isinstance(msg, CallAnswer)
    assert msg.chosen_profile == CATASTROPHIC
    assert encode(msg) == data.replace(b'"fec_ratio":1,', b'"fec_ratio":1.0,')
    # a longer decimal of the same f32 reads as that f32
    assert decode(data.replace(b'"fec_ratio":1,', b'"fec_ratio":1.00000001,')) == msg


def test_constructor_validation() -> None:
    with pytest.raises(SignalError, match=r"CallOffer\.identity_pub must be 32 bytes"):
        CallOffer(bytes(31), bytes(32), bytes(64), ())
    with pytest.raises(SignalError, match=r"Rekey\.signature must be 64 bytes"):
        Rekey(bytes(32), bytes(63))
    with pytest.raises(SignalError, match=r"Hangup\.call_id must be 32 lowercase hex"):
        Hangup(HangupReason.Normal, call_id="AB" * 16)
    with pytest.raises(SignalError, match=r"Join\.alias must be at most 64"):
        Join(bytes(32), "r", bytes(64), alias="x" * 65)
    with pytest.raises(SignalError, match=r"Ping\.timestamp_ms is out of range"):
        Ping(2**64)
    with pytest.raises(SignalError, match=r"Ping\.timestamp_ms must be an int"):
        Ping(True)
    with pytest.raises(SignalError, match="fec_ratio must be finite"):
        QualityUpdate(QualityUpdateReport(0, 0, 0, 0), GOOD.with_ratio(float("inf")))
    with pytest.raises(SignalError, match="lone surrogate"):
        IceCandidate("\ud800")
    assert Hangup("Busy").reason is HangupReason.Busy  # str coerced to the enum
    assert Join(bytearray(32), "r", bytes(64)).identity_pub == bytes(32)
    assert CallOffer(bytes(32), bytes(32), bytes(64), [GOOD]).supported_profiles == (GOOD,)
    assert Join(bytes(32), "r", bytes(64), alias="é" * 64).alias == "é" * 64
    with pytest.raises(TypeError):
        encode(UnknownMessage("X"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------- decode errors

_B32 = "[" + ",".join(["1"] * 32) + "]"
_B64 = "[" + ",".join(["1"] * 64) + "]"
_PROF = '{"codec":"Opus24k","fec_ratio":0.2,"frame_duration_ms":20,"frames_per_block":5}'


def _offer(**over: str) -> bytes:
    fields = {
        "identity_pub": _B32,
        "ephemeral_pub": _B32,
        "signature": _B64,
        "supported_profiles": f"[{_PROF}]",
    }
    fields.update(over)
    body = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return ('{"CallOffer":{' + body + "}}").encode("utf-8")


ERROR_CASES: list[tuple[bytes, str]] = [
    (b"", "invalid JSON"),
    (b"   ", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b'{"Ping":{"timestamp_ms":1}} x', "invalid JSON"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b'{"IceCandidate":{"candidate":"\xed\xa0\x80"}}', "not valid UTF-8"),
    (b"\xef\xbb\xbf" + b'{"Ping":{"timestamp_ms":1}}', "invalid JSON"),
    (b"[]", "got an array"),
    (b"null", "got null"),
    (b"true", "got a boolean"),
    (b"12", "got an integer"),
    (b"{}", "empty object"),
    (b'{"Ping":{"timestamp_ms":1},"Pong":{"timestamp_ms":1}}', "exactly one message key"),
    (b'{"Ping":{"timestamp_ms":1},"Ping":{"timestamp_ms":1}}', "duplicated message key"),
    (b'"Ping"', "Ping: expected an object"),
    (b'{"Ping":[1]}', "Ping: expected an object"),
    (b'{"Ping":null}', "Ping: expected an object"),
    (b'{"Ping":{"timestamp_ms":1,"timestamp_ms":2}}', "Ping.timestamp_ms is duplicated"),
    (b'{"Ping":{"timestamp_ms":true}}', "Ping.timestamp_ms must be an integer"),
    (b'{"Ping":{"timestamp_ms":1.0}}', "Ping.timestamp_ms must be an integer"),
    (b'{"Ping":{"timestamp_ms":1e3}}', "Ping.timestamp_ms must be an integer"),
    (b'{"Ping":{"timestamp_ms":"1"}}', "Ping.timestamp_ms must be an integer"),
    (b'{"Ping":{"timestamp_ms":null}}', "Ping.timestamp_ms must be an integer"),
    (b'{"Ping":{"timestamp_ms":-1}}', "Ping.timestamp_ms is out of range for u64"),
    (b'{"Pong":{"timestamp_ms":18446744073709551616}}', "Pong.timestamp_ms is out of range"),
    (b'{"Pong":{"timestamp_ms":' + b"9" * 5000 + b"}}", "Pong.timestamp_ms is out of range"),
    (b'{"Ping":{"timestamp_ms":NaN}}', "NaN"),
    (b'{"Ping":{"timestamp_ms":Infinity}}', "Infinity"),
    (b'{"Ping":{"timestamp_ms":1,"x":-Infinity}}', "Infinity"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"Hold":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
    (b'{"Hangup":{"reason":"Later"}}', "Hangup.reason must be one of"),
    (b'{"Hangup":{"reason":0}}', "Hangup.reason must be a string"),
    (b'{"Hangup":{"reason":"Busy","call_id":"ABCDEF"}}', "Hangup.call_id must be 32 lowercase"),
    (b'{"Hangup":{"reason":"Busy","call_id":5}}', "Hangup.call_id must be a string"),
    (
        b'{"Hangup":{"reason":"Busy","call_id":"0123456789abcdef0123456789ABCDEF"}}',
        "Hangup.call_id must be 32 lowercase",
    ),
    (b'{"Ringing":{}}', "Ringing.call_id is missing"),
    (b'{"Floor":{"slot":256}}', "Floor.slot is out of range for u8"),
    (b'{"Floor":{"slot":-1}}', "Floor.slot is out of range for u8"),
    (b'{"Floor":{"slot":false}}', "Floor.slot must be an integer"),
    (b'{"Error":{"code":"x"}}', "Error.message is missing"),
    (b'{"IceCandidate":{"candidate":"\\ud800"}}', "IceCandidate.candidate must be valid Unicode"),
    (b'{"\\udc00":{}}', "lone surrogate"),
    (
        b'{"RoomUpdate":{"room":"r","you":1,"participants":[{"fingerprint":"'
        + b"a" * 32
        + b'","slot":300}]}}',
        "RoomUpdate.participants[0].slot is out of range for u8",
    ),
    (
        b'{"RoomUpdate":{"room":"r","you":1,"participants":[{"fingerprint":"a","slot":3}]}}',
        "RoomUpdate.participants[0].fingerprint must be 32 lowercase hex",
    ),
    (b'{"RoomUpdate":{"room":"r","you":1,"participants":{}}}', "participants must be an array"),
    (b'{"RoomUpdate":{"room":"r","you":1,"participants":[7]}}', "participants[0] must be an obj"),
    (_offer(identity_pub="[]"), "CallOffer.identity_pub must have 32 elements (got 0)"),
    (_offer(identity_pub='"abc"'), "CallOffer.identity_pub must be an array"),
    (_offer(signature=_B32), "CallOffer.signature must have 64 elements (got 32)"),
    (_offer(ephemeral_pub=_B32.replace("1", "256", 1)), "CallOffer.ephemeral_pub[0] must be"),
    (_offer(ephemeral_pub=_B32.replace("1", "-1", 1)), "CallOffer.ephemeral_pub[0] must be"),
    (_offer(ephemeral_pub=_B32.replace("1", "true", 1)), "CallOffer.ephemeral_pub[0] must be"),
    (_offer(ephemeral_pub=_B32.replace("1", "1.0", 1)), "CallOffer.ephemeral_pub[0] must be"),
    (_offer(alias='"' + "x" * 65 + '"'), "CallOffer.alias must be at most 64 characters"),
    (_offer(to='"zz"'), "CallOffer.to must be 32 lowercase hex"),
    (_offer(**{"from": "7"}), "CallOffer.from must be a string"),
    (_offer(supported_profiles="{}"), "CallOffer.supported_profiles must be an array"),
    (
        _offer(supported_profiles=f"[{_PROF},{_PROF.replace('Opus24k', 'Opus99k')}]"),
        "CallOffer.supported_profiles[1].codec must be one of",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', 'true')}]"),
        "CallOffer.supported_profiles[0].fec_ratio must be a number",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', '-0.5')}]"),
        "supported_profiles[0].fec_ratio must be >= 0",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', '1e39')}]"),
        "supported_profiles[0].fec_ratio is out of range for f32",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', '1e999')}]"),
        "supported_profiles[0].fec_ratio is out of range for f32",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', '9' * 399)}]"),
        "supported_profiles[0].fec_ratio is out of range for f32",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace('0.2', '9' * 4000)}]"),
        "supported_profiles[0].fec_ratio is out of range for f32",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace(':20', ':0')}]"),
        "supported_profiles[0].frame_duration_ms must be an integer 1..255 (got 0)",
    ),
    (
        _offer(supported_profiles=f"[{_PROF.replace(':5}', ':256}')}]"),
        "supported_profiles[0].frames_per_block must be an integer 1..255 (got 256)",
    ),
    (
        _offer(supported_profiles="[" + _PROF.replace(',"frames_per_block":5', "") + "]"),
        "supported_profiles[0].frames_per_block is missing",
    ),
    (
        b'{"QualityUpdate":{"report":{"loss_pct":256,"rtt_4ms":0,"jitter_ms":0,'
        b'"bitrate_cap_kbps":0},"recommended_profile":' + _PROF.encode() + b"}}",
        "QualityUpdate.report.loss_pct is out of range for u8",
    ),
    (
        b'{"QualityUpdate":{"report":[],"recommended_profile":' + _PROF.encode() + b"}}",
        "QualityUpdate.report must be an object",
    ),
    (b" " * (sig.MAX_SIGNAL_BYTES + 1), "too long"),
]


@pytest.mark.parametrize(("data", "needle"), ERROR_CASES, ids=lambda x: repr(x)[:40])
def test_decode_errors(data: bytes, needle: str) -> None:
    with pytest.raises(SignalError) as ei:
        decode(data)
    assert needle in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_error_attributes() -> None:
    with pytest.raises(SignalError) as ei:
        decode(_offer(supported_profiles=f"[{_PROF.replace('Opus24k', 'X')}]"))
    assert ei.value.message_name == "CallOffer"
    assert ei.value.field == "supported_profiles[0].codec"
    with pytest.raises(SignalError) as ei:
        decode(b"{")
    assert ei.value.message_name is None


def test_leniency() -> None:
    assert decode(b' {"Floor" : { } } ') == Floor(None)  # serde Option: missing -> None
    assert decode(b'{"Floor":{"slot":7,"x":{"y":[1.5e999999]}}}') == Floor(7)
    assert decode(b'{"Ping":{"big":' + b"9" * 5000 + b',"timestamp_ms":3}}') == Ping(3)
    assert decode(b'{"Hangup":{"call_id":null,"reason":"Timeout"}}') == Hangup(HangupReason.Timeout)
    # a duplicated key that is not a field of the message is ignored like any unknown key
    assert decode(b'{"Ping":{"x":1,"x":2,"timestamp_ms":4}}') == Ping(4)
    # a participant without alias
    m = decode(
        b'{"RoomUpdate":{"participants":[{"slot":3,"fingerprint":"' + b"f" * 32 + b'"}],'
        b'"you":3,"room":"r"}}'
    )
    assert m == RoomUpdate("r", 3, (Participant("f" * 32, None, 3),))
    assert encode(m) == (
        b'{"RoomUpdate":{"room":"r","you":3,"participants":[{"fingerprint":"'
        + b"f" * 32
        + b'","slot":3}]}}'
    )


# ------------------------------------------------------------------------- hypothesis

b32 = st.binary(min_size=32, max_size=32)
b64 = st.binary(min_size=64, max_size=64)
hex16 = st.binary(min_size=16, max_size=16).map(bytes.hex)
opt_hex16 = st.none() | hex16
text = st.text(max_size=40)
alias = st.text(max_size=64)
u8 = st.integers(0, 255)
u64 = st.integers(0, 2**64 - 1)
profiles = st.builds(
    Profile,
    st.sampled_from(CodecId),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False, width=32),
    st.integers(1, 255),
    st.integers(1, 255),
)
reports = st.builds(QualityUpdateReport, u8, u8, u8, u8)
participants = st.builds(Participant, hex16, st.none() | alias, u8)

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    CallOffer: st.builds(
        CallOffer,
        b32,
        b32,
        b64,
        st.lists(profiles, max_size=4),
        call_id=opt_hex16,
        to=opt_hex16,
        from_=opt_hex16,
        alias=st.none() | alias,
    ),
    CallAnswer: st.builds(
        CallAnswer, b32, b32, b64, profiles, call_id=opt_hex16, to=opt_hex16, from_=opt_hex16
    ),
    IceCandidate: st.builds(IceCandidate, text, to=opt_hex16, from_=opt_hex16),
    Rekey: st.builds(Rekey, b32, b64, call_id=opt_hex16, to=opt_hex16, from_=opt_hex16),
    QualityUpdate: st.builds(QualityUpdate, reports, profiles, to=opt_hex16, from_=opt_hex16),
    Ping: st.builds(Ping, u64),
    Pong: st.builds(Pong, u64),
    Hangup: st.builds(
        Hangup, st.sampled_from(HangupReason), call_id=opt_hex16, to=opt_hex16, from_=opt_hex16
    ),
    Ringing: st.builds(Ringing, hex16, to=opt_hex16, from_=opt_hex16),
    Join: st.builds(Join, b32, text, b64, alias=st.none() | alias),
    RoomUpdate: st.builds(RoomUpdate, text, u8, st.lists(participants, max_size=4)),
    Floor: st.builds(Floor, st.none() | u8),
    Error: st.builds(Error, text, text, to=opt_hex16, from_=opt_hex16),
}
MESSAGES = st.one_of(*STRATEGIES.values())
ALL_TYPES = sorted(sig.MESSAGE_TYPES.values(), key=lambda c: c.__name__)


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(sig.MESSAGE_TYPES.values())
    assert all(name == cls.__name__ for name, cls in sig.MESSAGE_TYPES.items())


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_roundtrip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    wire = encode(msg)
    back = decode(wire)
    assert back == msg
    assert type(back) is type(msg)
    assert encode(back) == wire
    # standard JSON, one key: the message name
    parsed = json.loads(wire)
    assert list(parsed) == [type(msg).__name__]
    # keys in dataclass (SPEC) order, None optionals left out
    keys = [
        ("from" if f.name == "from_" else f.name)
        for f in dataclasses.fields(msg)
        if getattr(msg, f.name) is not None or type(msg) is Floor
    ]
    assert list(parsed[type(msg).__name__]) == keys


def _shuffle_and_extend(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = [(k, _shuffle_and_extend(v, rnd)) for k, v in value.items()]
        items.append((f"zz_unknown_{rnd.randrange(99)}", [1, {"a": None}, "x", 2.5]))
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_shuffle_and_extend(v, rnd) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.randoms(use_true_random=False))
def test_lenient_key_order_and_unknown_keys(msg: Any, rnd: random.Random) -> None:
    tree = json.loads(encode(msg))
    name = type(msg).__name__
    tree[name] = _shuffle_and_extend(tree[name], rnd)
    data = json.dumps(tree, ensure_ascii=rnd.random() < 0.5, indent=rnd.choice([None, 1]))
    assert decode(data.encode("utf-8")) == msg


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    result = _outcome(data)
    assert isinstance(result, (*sig.MESSAGE_TYPES.values(), UnknownMessage, SignalError))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["\ud800", "Ping", "Busy", "Opus24k", "a" * 32, "Hold"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "timestamp_ms",
                    "reason",
                    "call_id",
                    "slot",
                    "codec",
                    "fec_ratio",
                    "identity_pub",
                    "report",
                    "participants",
                    "room",
                    "x",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@st.composite
def jsonish(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a known message name with arbitrary fields
        name = draw(st.sampled_from(sorted(sig.MESSAGE_TYPES)))
        body = draw(json_values)
        text_ = json.dumps({name: body})
    elif kind == 1:  # a valid message with one field replaced by anything
        msg = draw(MESSAGES)
        tree = json.loads(encode(msg))
        name = type(msg).__name__
        fields_ = tree[name]
        key = draw(st.sampled_from(sorted(fields_) or ["x"]))
        fields_[key] = draw(json_values)
        text_ = json.dumps(tree)
    elif kind == 2:  # deep nesting
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"Ping":[', "]}")]))
        text_ = opener * depth + "1" + closer * draw(st.integers(0, depth))
    elif kind == 3:  # huge numbers in field positions
        digits = draw(st.integers(1, 6000))
        number = draw(st.sampled_from(["9" * digits, "-" + "9" * digits, f"1e{digits}", "1.5"]))
        key = draw(st.sampled_from(["timestamp_ms", "slot", "x"]))
        name = draw(st.sampled_from(["Ping", "Floor", "Pong", "Nope"]))
        text_ = f'{{"{name}":{{"{key}":{number}}}}}'
    else:
        text_ = json.dumps(draw(json_values))
    raw = text_.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:  # random corruption, mostly JSON punctuation
        pos = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(max_size=3) | st.sampled_from([b"", b",", b"}", b"]", b'"', b"-"]))
        raw = raw[:pos] + junk + raw[pos + 1 :]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jsonish())
def test_jsonish_never_escapes(data: bytes) -> None:
    result = _outcome(data)
    assert isinstance(result, (*sig.MESSAGE_TYPES.values(), UnknownMessage, SignalError))
    if not isinstance(result, SignalError | UnknownMessage):
        # anything accepted re-encodes to something that decodes to the same message
        assert decode(encode(result)) == result
