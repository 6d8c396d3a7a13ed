"""Signalling stream framing (SPEC 3.1): u32 big-endian length || payload, then FIN.

Pure byte handling, no I/O. A signalling stream carries exactly one message: the sender
writes ``frame(payload)`` and finishes the stream. The receiver feeds whatever chunks
arrive to a :class:`FrameReader` and calls :meth:`FrameReader.end_of_stream` on FIN.

Errors are reported by raising :class:`FramingError` (a ``ValueError``). An error is
final: once raised, every later call on the same reader raises it again.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_FRAME_PAYLOAD", "FrameReader", "FramingError", "frame", "unframe"]

#: SPEC 3.1: lengths over 1 MiB are refused.
MAX_FRAME_PAYLOAD = 1_048_576

_LEN = struct.Struct(">I")


class FramingError(ValueError):
    """A stream that breaks SPEC 3.1: oversize length, truncated message, extra bytes."""


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """``u32 big-endian length || payload``; ``FramingError`` if longer than 1 MiB."""
    n = len(payload)
    if n > MAX_FRAME_PAYLOAD:
        raise FramingError(
            f"payload of {n} bytes is over the {MAX_FRAME_PAYLOAD}-byte limit (SPEC 3.1)"
        )
    return _LEN.pack(n) + bytes(payload)


class FrameReader:
    """Incremental reader of length-prefixed payloads.

    ``feed(chunk)`` returns the payloads completed by that chunk (in order, possibly
    none). With ``single=True`` (the default, the SPEC 3.1 shape) the stream may carry one
    message only: any byte after it is an error, raised by the ``feed`` that brings it.
    With ``single=False`` it reads back-to-back frames.

    A length over ``max_payload`` is refused by the ``feed`` that completes the 4-byte
    prefix, before any of the payload is buffered.

    ``end_of_stream()`` is called when the stream ends (FIN): it returns ``None`` when the
    stream ended cleanly (``single``: exactly one complete message; otherwise: at a frame
    boundary) and raises ``FramingError`` saying why not (no message, a partial length,
    a truncated payload). The reader accepts no data after ``end_of_stream()``.
    """

    __slots__ = ("_buf", "_count", "_error", "_finished", "_need", "max_payload", "single")

    def __init__(self, *, single: bool = True, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self.single = single
        self.max_payload = max_payload
        self._buf = bytearray()
        #: payload length being read, or None while reading the 4-byte prefix
        self._need: int | None = None
        self._count = 0
        self._error: FramingError | None = None
        self._finished = False

    @property
    def messages(self) -> int:
        """How many complete payloads have been returned so far."""
        return self._count

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete prefix or payload."""
        return len(self._buf)

    def _fail(self, text: str) -> FramingError:
        self._error = FramingError(text)
        self._buf = bytearray()
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return the payloads it completes. Raises ``FramingError``."""
        if self._error is not None:
            raise self._error
        if self._finished:
            raise self._fail("data fed after end_of_stream()")
        out: list[bytes] = []
        view = memoryview(data).cast("B")
        pos = 0
        end = len(view)
        while pos < end:
            if self.single and self._count >= 1:
                raise self._fail(
                    f"{end - pos} extra byte(s) after the message: a signalling stream "
                    "carries exactly one message (SPEC 3.1)"
                )
            if self._need is None:
                take = min(4 - len(self._buf), end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < 4:
                    break
                (n,) = _LEN.unpack(self._buf)
                self._buf = bytearray()
                if n > self.max_payload:
                    raise self._fail(
                        f"announced length {n} is over the {self.max_payload}-byte limit (SPEC 3.1)"
                    )
                self._need = n
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                out.append(bytes(self._buf))
                self._buf = bytearray()
                self._need = None
                self._count += 1
        return out

    def end_of_stream(self) -> None:
        """The stream has ended: ``None`` if it ended cleanly, else ``FramingError``."""
        if self._error is not None:
            raise self._error
        self._finished = True
        if self._need is not None:
            raise self._fail(
                f"stream ended inside a message: {len(self._buf)} of {self._need} "
                "payload bytes received"
            )
        if self._buf:
            raise self._fail(
                f"stream ended inside the length prefix: {len(self._buf)} of 4 bytes received"
            )
        if self.single and self._count == 0:
            raise self._fail("stream ended without a message")


def unframe(data: bytes | bytearray | memoryview) -> bytes:
    """The payload of a complete one-message stream; ``FramingError`` if it is not one."""
    reader = FrameReader()
    payloads = reader.feed(data)
    reader.end_of_stream()  # raises unless exactly one complete message was read
    return payloads[0]
