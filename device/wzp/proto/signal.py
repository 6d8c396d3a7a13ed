"""Signalling messages (SPEC 3.2, 3.3): typed values, exact JSON encoding, lenient decoding.

Every message is a frozen dataclass whose class name is its JSON name. ``encode`` writes
the exact compact, externally tagged JSON of SPEC 3.2 (fields in SPEC order, optional
fields left out when ``None``, byte strings as arrays of decimal integers, floats as the
shortest decimal that round-trips as binary32, non-ASCII kept as UTF-8 like serde_json).

``decode`` is lenient as SPEC 3.2 asks: key order is free and unknown keys are ignored;
an unknown message name gives an :class:`UnknownMessage` value (log it and skip it, the
call goes on); anything wrong with a known message raises :class:`SignalError`, a
``ValueError`` whose text names the message and the field. For any input bytes,
``decode`` returns a message or ``UnknownMessage`` or raises ``SignalError``; nothing else.

Constructing a message validates its fields the same way and raises ``SignalError`` too,
so a value that exists can always be encoded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, TypeAlias

from .codecs import CodecId
from .f32 import f32, shortest_f32_repr
from .profiles import Profile

__all__ = [
    "MAX_ALIAS_CHARS",
    "MAX_SIGNAL_BYTES",
    "MESSAGE_TYPES",
    "CallAnswer",
    "CallOffer",
    "Error",
    "Floor",
    "Hangup",
    "HangupReason",
    "IceCandidate",
    "Join",
    "Message",
    "Participant",
    "Ping",
    "Pong",
    "QualityUpdate",
    "QualityUpdateReport",
    "Rekey",
    "Ringing",
    "RoomUpdate",
    "SignalError",
    "UnknownMessage",
    "decode",
    "encode",
]

#: SPEC 3.3: ``alias`` is at most 64 characters (Unicode code points).
MAX_ALIAS_CHARS = 64
#: SPEC 3.1: a signalling message is at most 1 MiB; ``decode`` refuses anything longer.
MAX_SIGNAL_BYTES = 1_048_576

#: Integers in the JSON text longer than this many characters are not even converted.
_MAX_INT_CHARS = 400
#: Smallest magnitude that rounds to infinity in binary32 (FLT_MAX + half an ulp).
_F32_OVERFLOW = float(2**128 - 2**103)
_HEX = frozenset("0123456789abcdef")


class SignalError(ValueError):
    """A signalling message that cannot be decoded (or built): bad JSON, missing field, ...

    ``message_name`` is the message concerned (``None`` when the JSON itself is bad) and
    ``field`` the path of the offending field inside it (e.g. ``"supported_profiles[1].codec"``),
    ``None`` when the problem is not one field's.
    """

    def __init__(
        self, text: str, *, message_name: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(text)
        self.message_name = message_name
        self.field = field


# --------------------------------------------------------------------------- JSON plumbing


class _Obj:
    """A parsed JSON object that remembers which keys were duplicated."""

    __slots__ = ("dups", "items", "n_pairs")

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.items: dict[str, Any] = dict(pairs)
        self.n_pairs = len(pairs)
        self.dups: frozenset[str] = frozenset()
        if len(self.items) != len(pairs):
            seen: set[str] = set()
            dups = set()
            for k, _ in pairs:
                if k in seen:
                    dups.add(k)
                seen.add(k)
            self.dups = frozenset(dups)


class _BigInt:
    """An integer literal too long to be worth converting: out of range for every field."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(s: str) -> int | _BigInt:
    return int(s) if len(s) <= _MAX_INT_CHARS else _BigInt(len(s))


def _parse_constant(s: str) -> Any:
    raise SignalError(f"invalid JSON: {s} is not a JSON number")


def _jtype(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | _BigInt):
        return "an integer"
    if isinstance(raw, float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, _Obj):
        return "an object"
    return type(raw).__name__


def _json_str(s: str) -> str:
    # Same escapes as serde_json: \" \\ \b \f \n \r \t, other controls \u00xx, rest as is.
    return json.dumps(s, ensure_ascii=False)


# --------------------------------------------------------------------------- field kinds


class _Where:
    """Where a value sits: a message (or record) name and a field path, for error texts."""

    __slots__ = ("msg", "path")

    def __init__(self, msg: str, path: str) -> None:
        self.msg = msg
        self.path = path

    def __getitem__(self, index: int) -> _Where:
        return _Where(self.msg, f"{self.path}[{index}]")

    def sub(self, key: str) -> _Where:
        return _Where(self.msg, f"{self.path}.{key}" if self.path else key)

    def error(self, problem: str) -> SignalError:
        return SignalError(
            f"{self.msg}.{self.path} {problem}", message_name=self.msg, field=self.path
        )


class _Kind:
    """How one field's value is checked (Python side), parsed (JSON side) and written."""

    def check(self, value: Any, where: _Where) -> Any:
        """Validate a Python value; return it, possibly normalised (list -> tuple, ...)."""
        raise NotImplementedError

    def parse(self, raw: Any, where: _Where) -> Any:
        """Turn a parsed JSON value into the Python value, or raise ``SignalError``."""
        raise NotImplementedError

    def write(self, value: Any) -> str:
        """The compact JSON text of a checked Python value."""
        raise NotImplementedError


class _UInt(_Kind):
    def __init__(self, bits: int, low: int = 0) -> None:
        self.bits = bits
        self.low = low
        self.high = (1 << bits) - 1
        self.text = f"u{bits}" if low == 0 else f"an integer {low}..{self.high}"

    def _range(self, value: int, where: _Where) -> int:
        if not self.low <= value <= self.high:
            if self.low == 0:
                raise where.error(f"is out of range for {self.text} (got {value})")
            raise where.error(f"must be {self.text} (got {value})")
        return value

    def check(self, value: Any, where: _Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"must be an int, not {type(value).__name__}")
        return self._range(int(value), where)

    def parse(self, raw: Any, where: _Where) -> int:
        if isinstance(raw, _BigInt):
            raise where.error(f"is out of range for {self.text} ({raw.digits}-digit integer)")
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise where.error(f"must be an integer ({self.text}), got {_jtype(raw)}")
        return self._range(raw, where)

    def write(self, value: int) -> str:
        return str(value)


class _Bytes(_Kind):
    def __init__(self, length: int) -> None:
        self.length = length

    def check(self, value: Any, where: _Where) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise where.error(f"must be bytes, not {type(value).__name__}")
        value = bytes(value)
        if len(value) != self.length:
            raise where.error(f"must be {self.length} bytes long (got {len(value)})")
        return value

    def parse(self, raw: Any, where: _Where) -> bytes:
        if not isinstance(raw, list):
            raise where.error(f"must be an array of {self.length} integers, got {_jtype(raw)}")
        if len(raw) != self.length:
            raise where.error(f"must have {self.length} elements (got {len(raw)})")
        for i, b in enumerate(raw):
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 255:
                shown = _jtype(b) if not isinstance(b, int) or isinstance(b, bool) else b
                raise where[i].error(f"must be an integer 0..255 (got {shown})")
        return bytes(raw)

    def write(self, value: bytes) -> str:
        return "[" + ",".join(map(str, value)) + "]"


class _Str(_Kind):
    def __init__(self, max_chars: int | None = None) -> None:
        self.max_chars = max_chars

    def check(self, value: Any, where: _Where) -> str:
        if not isinstance(value, str):
            raise where.error(f"must be a string, not {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise where.error("must be valid Unicode (it holds a lone surrogate)") from None
        if self.max_chars is not None and len(value) > self.max_chars:
            raise where.error(f"must be at most {self.max_chars} characters (got {len(value)})")
        return str(value)

    def parse(self, raw: Any, where: _Where) -> str:
        if not isinstance(raw, str):
            raise where.error(f"must be a string, got {_jtype(raw)}")
        return self.check(raw, where)

    def write(self, value: str) -> str:
        return _json_str(value)


class _Hex16(_Str):
    """16 bytes as 32 lowercase hex characters (``call_id``, fingerprints)."""

    def check(self, value: Any, where: _Where) -> str:
        value = super().check(value, where)
        if len(value) != 32 or not _HEX.issuperset(value):
            raise where.error(f"must be 32 lowercase hex characters (got {value[:80]!r})")
        return value


class _Enum(_Kind):
    def __init__(self, enum: type[Enum]) -> None:
        self.enum = enum
        self.names = ", ".join(repr(m.value) for m in enum)

    def _lookup(self, value: Any, where: _Where) -> Enum:
        try:
            return self.enum(value)
        except ValueError:
            raise where.error(f"must be one of {self.names} (got {value!r:.80})") from None

    def check(self, value: Any, where: _Where) -> Enum:
        if isinstance(value, self.enum):
            return value
        if isinstance(value, str):
            return self._lookup(value, where)
        raise where.error(f"must be a {self.enum.__name__}, not {type(value).__name__}")

    def parse(self, raw: Any, where: _Where) -> Enum:
        if not isinstance(raw, str):
            raise where.error(f"must be a string, got {_jtype(raw)}")
        return self._lookup(raw, where)

    def write(self, value: Enum) -> str:
        return _json_str(value.value)


class _Nullable(_Kind):
    def __init__(self, inner: _Kind) -> None:
        self.inner = inner

    def check(self, value: Any, where: _Where) -> Any:
        return None if value is None else self.inner.check(value, where)

    def parse(self, raw: Any, where: _Where) -> Any:
        return None if raw is None else self.inner.parse(raw, where)

    def write(self, value: Any) -> str:
        return "null" if value is None else self.inner.write(value)


class _List(_Kind):
    def __init__(self, item: _Kind) -> None:
        self.item = item

    def check(self, value: Any, where: _Where) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise where.error(f"must be a list or tuple, not {type(value).__name__}")
        return tuple(self.item.check(v, where[i]) for i, v in enumerate(value))

    def parse(self, raw: Any, where: _Where) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise where.error(f"must be an array, got {_jtype(raw)}")
        return tuple(self.item.parse(v, where[i]) for i, v in enumerate(raw))

    def write(self, value: tuple[Any, ...]) -> str:
        return "[" + ",".join(self.item.write(v) for v in value) + "]"


_U8 = _UInt(8)
_U64 = _UInt(64)
_NONZERO_U8 = _UInt(8, low=1)


class _ProfileKind(_Kind):
    """``{"codec": name, "fec_ratio": f32, "frame_duration_ms": u8, "frames_per_block": u8}``."""

    def check(self, value: Any, where: _Where) -> Profile:
        if not isinstance(value, Profile):
            raise where.error(f"must be a Profile, not {type(value).__name__}")
        if not isinstance(value.codec, CodecId):
            raise where.sub("codec").error("must be a CodecId")
        if not math.isfinite(value.fec_ratio):
            raise where.sub("fec_ratio").error(f"must be finite (got {value.fec_ratio})")
        return value

    def parse(self, raw: Any, where: _Where) -> Profile:
        if not isinstance(raw, _Obj):
            raise where.error(f"must be an object, got {_jtype(raw)}")
        get = _Getter(raw, where)
        name = get.required("codec")
        if not isinstance(name, str):
            raise where.sub("codec").error(f"must be a string, got {_jtype(name)}")
        codec = CodecId.__members__.get(name)
        if codec is None:
            names = ", ".join(CodecId.__members__)
            raise where.sub("codec").error(f"must be one of {names} (got {name!r:.80})")
        ratio = _parse_f32(get.required("fec_ratio"), where.sub("fec_ratio"))
        if not ratio >= 0.0:
            raise where.sub("fec_ratio").error(f"must be >= 0 (got {ratio})")
        duration = _NONZERO_U8.parse(
            get.required("frame_duration_ms"), where.sub("frame_duration_ms")
        )
        per_block = _NONZERO_U8.parse(
            get.required("frames_per_block"), where.sub("frames_per_block")
        )
        return Profile(codec, ratio, duration, per_block)

    def write(self, value: Profile) -> str:
        return (
            f'{{"codec":{_json_str(value.codec.name)},'
            f'"fec_ratio":{shortest_f32_repr(value.fec_ratio)},'
            f'"frame_duration_ms":{value.frame_duration_ms},'
            f'"frames_per_block":{value.frames_per_block}}}'
        )


def _parse_f32(raw: Any, where: _Where) -> float:
    """A JSON number (integer or not, never a boolean) as the binary32 value it denotes."""
    if isinstance(raw, _BigInt):
        raise where.error(f"is out of range for f32 ({raw.digits}-digit integer)")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise where.error(f"must be a number (f32), got {_jtype(raw)}")
    try:
        x = float(raw)
    except OverflowError:
        raise where.error("is out of range for f32") from None
    if not math.isfinite(x) or abs(x) >= _F32_OVERFLOW:
        raise where.error(f"is out of range for f32 (got {raw!r:.40})")
    return f32(x)


class _Getter:
    """Reads keys of one JSON object: duplicates of a key we read are errors."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: _Obj, where: _Where) -> None:
        self.obj = obj
        self.where = where

    def _dup(self, key: str) -> None:
        if key in self.obj.dups:
            raise self.where.sub(key).error("is duplicated")

    def required(self, key: str) -> Any:
        self._dup(key)
        try:
            return self.obj.items[key]
        except KeyError:
            raise self.where.sub(key).error("is missing (required field)") from None

    def optional(self, key: str) -> Any:
        self._dup(key)
        return self.obj.items.get(key)


# --------------------------------------------------------------------------- records


def _wire(
    kind: _Kind, *, key: str | None = None, optional: bool = False, missing_ok: bool = False
) -> dict[str, Any]:
    """Metadata of one wire field.

    ``optional``: left out of the JSON when ``None``; missing or ``null`` decodes as ``None``.
    ``missing_ok``: always written (possibly as ``null``), but a missing key decodes as ``None``
    (serde's default for ``Option`` fields).
    """
    return {"wire": (kind, key, optional, missing_ok)}


class _Record:
    """Base of the wire records: validation on construction, JSON reading and writing."""

    __slots__ = ()
    #: (python attribute, JSON key, kind, optional, missing_ok) in wire order
    _WIRE: ClassVar[tuple[tuple[str, str, _Kind, bool, bool], ...]] = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        for attr, key, kind, optional, _ in self._WIRE:
            value = getattr(self, attr)
            if value is None and optional:
                continue
            checked = kind.check(value, _Where(name, key))
            if checked is not value:
                object.__setattr__(self, attr, checked)

    @classmethod
    def _parse(cls, raw: Any, where: _Where) -> Any:
        if not isinstance(raw, _Obj):
            raise where.error(f"must be an object, got {_jtype(raw)}")
        return cls._from_obj(raw, where)

    @classmethod
    def _from_obj(cls, obj: _Obj, where: _Where) -> Any:
        get = _Getter(obj, where)
        kwargs: dict[str, Any] = {}
        for attr, key, kind, optional, missing_ok in cls._WIRE:
            fw = where.sub(key)
            if optional or missing_ok:
                raw = get.optional(key)
                kwargs[attr] = None if raw is None else kind.parse(raw, fw)
            else:
                raw = get.required(key)
                kwargs[attr] = kind.parse(raw, fw)
        return cls(**kwargs)

    def _write_body(self) -> str:
        parts = []
        for attr, key, kind, optional, _ in self._WIRE:
            value = getattr(self, attr)
            if value is None and optional:
                continue
            parts.append(f"{_json_str(key)}:{kind.write(value)}")
        return "{" + ",".join(parts) + "}"


def _finish(cls: type) -> type:
    """Fill ``cls._WIRE`` from the dataclass fields' metadata (after ``@dataclass``)."""
    wire = []
    for f in fields(cls):
        kind, key, optional, missing_ok = f.metadata["wire"]
        wire.append((f.name, key or f.name, kind, optional, missing_ok))
    cls._WIRE = tuple(wire)
    return cls


class _RecordKind(_Kind):
    """A nested record (``report``, ``participants[i]``)."""

    def __init__(self, cls: type[_Record]) -> None:
        self.cls = cls

    def check(self, value: Any, where: _Where) -> Any:
        if not isinstance(value, self.cls):
            raise where.error(f"must be a {self.cls.__name__}, not {type(value).__name__}")
        return value

    def parse(self, raw: Any, where: _Where) -> Any:
        return self.cls._parse(raw, where)

    def write(self, value: _Record) -> str:
        return value._write_body()


_ALIAS = _Str(MAX_ALIAS_CHARS)


class HangupReason(Enum):
    Normal = "Normal"
    Busy = "Busy"
    Declined = "Declined"
    Timeout = "Timeout"
    Error = "Error"


@_finish
@dataclass(frozen=True, slots=True)
class QualityUpdateReport(_Record):
    """``QualityUpdate.report``: the four u8 of the media quality report (SPEC 1.3)."""

    loss_pct: int = field(metadata=_wire(_U8))
    rtt_4ms: int = field(metadata=_wire(_U8))
    jitter_ms: int = field(metadata=_wire(_U8))
    bitrate_cap_kbps: int = field(metadata=_wire(_U8))


@_finish
@dataclass(frozen=True, slots=True)
class Participant(_Record):
    """One entry of ``RoomUpdate.participants``; ``alias`` is left out when ``None``."""

    fingerprint: str = field(metadata=_wire(_Hex16()))
    alias: str | None = field(metadata=_wire(_ALIAS, optional=True))
    slot: int = field(metadata=_wire(_U8))


_ID32 = _Bytes(32)
_SIG64 = _Bytes(64)
_CALL_ID = _Hex16()
_FPR = _Hex16()
_PROFILE = _ProfileKind()


class _Message(_Record):
    __slots__ = ()


@_finish
@dataclass(frozen=True, slots=True)
class CallOffer(_Message):
    identity_pub: bytes = field(metadata=_wire(_ID32))
    ephemeral_pub: bytes = field(metadata=_wire(_ID32))
    signature: bytes = field(metadata=_wire(_SIG64))
    supported_profiles: tuple[Profile, ...] = field(metadata=_wire(_List(_PROFILE)))
    call_id: str | None = field(default=None, metadata=_wire(_CALL_ID, optional=True))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))
    alias: str | None = field(default=None, metadata=_wire(_ALIAS, optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class CallAnswer(_Message):
    identity_pub: bytes = field(metadata=_wire(_ID32))
    ephemeral_pub: bytes = field(metadata=_wire(_ID32))
    signature: bytes = field(metadata=_wire(_SIG64))
    chosen_profile: Profile = field(metadata=_wire(_PROFILE))
    call_id: str | None = field(default=None, metadata=_wire(_CALL_ID, optional=True))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class IceCandidate(_Message):
    candidate: str = field(metadata=_wire(_Str()))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class Rekey(_Message):
    new_ephemeral_pub: bytes = field(metadata=_wire(_ID32))
    signature: bytes = field(metadata=_wire(_SIG64))
    call_id: str | None = field(default=None, metadata=_wire(_CALL_ID, optional=True))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class QualityUpdate(_Message):
    report: QualityUpdateReport = field(metadata=_wire(_RecordKind(QualityUpdateReport)))
    recommended_profile: Profile = field(metadata=_wire(_PROFILE))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class Ping(_Message):
    """``timestamp_ms``: the sender's monotonic clock in ms (SPEC 7)."""

    timestamp_ms: int = field(metadata=_wire(_U64))


@_finish
@dataclass(frozen=True, slots=True)
class Pong(_Message):
    """Echoes the ``Ping``'s ``timestamp_ms``."""

    timestamp_ms: int = field(metadata=_wire(_U64))


@_finish
@dataclass(frozen=True, slots=True)
class Hangup(_Message):
    reason: HangupReason = field(metadata=_wire(_Enum(HangupReason)))
    call_id: str | None = field(default=None, metadata=_wire(_CALL_ID, optional=True))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class Ringing(_Message):
    """Callee has been alerted. ``call_id`` is its only field, so it is required here."""

    call_id: str = field(metadata=_wire(_CALL_ID))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class Join(_Message):
    identity_pub: bytes = field(metadata=_wire(_ID32))
    room: str = field(metadata=_wire(_Str()))
    signature: bytes = field(metadata=_wire(_SIG64))
    alias: str | None = field(default=None, metadata=_wire(_ALIAS, optional=True))


@_finish
@dataclass(frozen=True, slots=True)
class RoomUpdate(_Message):
    room: str = field(metadata=_wire(_Str()))
    you: int = field(metadata=_wire(_U8))
    participants: tuple[Participant, ...] = field(metadata=_wire(_List(_RecordKind(Participant))))


@_finish
@dataclass(frozen=True, slots=True)
class Floor(_Message):
    """Who holds the floor: a slot, or ``None`` (written ``null``) when nobody does."""

    slot: int | None = field(default=None, metadata=_wire(_Nullable(_U8), missing_ok=True))


@_finish
@dataclass(frozen=True, slots=True)
class Error(_Message):
    """A refusal to show the user (``code`` e.g. ``"not-allowed"``, ``"room-full"``)."""

    code: str = field(metadata=_wire(_Str()))
    message: str = field(metadata=_wire(_Str()))
    to: str | None = field(default=None, metadata=_wire(_FPR, optional=True))
    from_: str | None = field(default=None, metadata=_wire(_FPR, key="from", optional=True))


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message whose name this implementation does not know: log it and skip it."""

    name: str


Message: TypeAlias = (
    CallOffer
    | CallAnswer
    | IceCandidate
    | Rekey
    | QualityUpdate
    | Ping
    | Pong
    | Hangup
    | Ringing
    | Join
    | RoomUpdate
    | Floor
    | Error
)

#: JSON name -> message class.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        CallOffer,
        CallAnswer,
        IceCandidate,
        Rekey,
        QualityUpdate,
        Ping,
        Pong,
        Hangup,
        Ringing,
        Join,
        RoomUpdate,
        Floor,
        Error,
    )
}


# --------------------------------------------------------------------------- encode / decode


def encode(msg: Message) -> bytes:
    """The exact compact JSON of ``msg`` (SPEC 3.2), UTF-8, without the length prefix."""
    cls = type(msg)
    if MESSAGE_TYPES.get(cls.__name__) is not cls:
        raise TypeError(f"not a signalling message: {cls.__name__}")
    return f"{{{_json_str(cls.__name__)}:{msg._write_body()}}}".encode()


def decode(data: bytes | bytearray | memoryview) -> Message | UnknownMessage:
    """Parse one signalling message (the payload of a frame, SPEC 3.1).

    Returns the message, or ``UnknownMessage(name)`` for a name this implementation does
    not know. Raises ``SignalError`` for anything else wrong; never anything else.
    """
    if len(data) > MAX_SIGNAL_BYTES:
        raise SignalError(f"message too long: {len(data)} bytes (limit {MAX_SIGNAL_BYTES})")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SignalError(f"not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        top = json.loads(
            text,
            object_pairs_hook=_Obj,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )
    except SignalError:
        raise
    except RecursionError:
        raise SignalError("invalid JSON: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError
        raise SignalError(f"invalid JSON: {e}") from None

    if isinstance(top, str):
        _check_name(top)
        if top in MESSAGE_TYPES:
            raise SignalError(
                f"{top}: expected an object of fields, got a bare name", message_name=top
            )
        return UnknownMessage(top)
    if not isinstance(top, _Obj):
        raise SignalError(f"expected a JSON object with one message key, got {_jtype(top)}")
    if top.n_pairs != 1:
        if top.n_pairs == 0:
            raise SignalError("expected one message key, got an empty object")
        raise SignalError(
            f"expected exactly one message key, got {top.n_pairs}"
            + (" (duplicated message key)" if top.dups else "")
        )
    ((name, body),) = top.items.items()
    _check_name(name)
    cls = MESSAGE_TYPES.get(name)
    if cls is None:
        return UnknownMessage(name)
    if not isinstance(body, _Obj):
        raise SignalError(
            f"{name}: expected an object of fields, got {_jtype(body)}", message_name=name
        )
    return cls._from_obj(body, _Where(name, ""))


def _check_name(name: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SignalError("message name holds a lone surrogate") from None
