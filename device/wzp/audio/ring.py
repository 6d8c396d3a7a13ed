"""A single-producer, single-consumer ring of int16 samples (ARCHITECTURE rule 2).

One thread writes (an ALSA capture thread, or the asyncio loop feeding playback), one
thread reads (the asyncio loop, or the ALSA playback thread). Each side owns one cursor
and is the only one to move it: the producer moves the write cursor, the consumer the
read cursor. The cursors are ever-growing Python ints (the position in the buffer is the
cursor modulo the capacity), so "full" and "empty" never need a spare slot or a flag.

Why no lock is needed: each cursor has a single writer, and it publishes its new value
with one attribute store only after the numpy copy into (or out of) the buffer is done.
Under CPython's GIL an attribute store is atomic and bytecodes of one thread happen in
program order as seen by every other thread, so the other side either sees the old
cursor (and ignores the samples being copied) or the new one (and the samples are
there). The other side only ever reads the cursor it does not own. (A free-threaded
CPython build would need a lock or explicit barriers here; Raspberry Pi OS ships the GIL
build.)

Overflow drops the newest samples (the ones that do not fit) and counts ``overruns``;
asking for more than is there returns ``None`` and counts ``underruns``. Both counters
are written by their own side only (overruns by the producer, underruns by the consumer).
"""

from __future__ import annotations

import numpy as np


class Ring:
    def __init__(self, capacity_samples: int) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"ring capacity must be positive, not {capacity_samples}")
        self.capacity = int(capacity_samples)
        self._buf = np.zeros(self.capacity, dtype=np.int16)
        self._w = 0  # total samples ever written: moved by the producer only
        self._r = 0  # total samples ever consumed: moved by the consumer only
        self.overruns = 0  # producer: writes that did not fit entirely
        self.dropped_samples = 0  # producer: samples those writes dropped
        self.underruns = 0  # consumer: reads asked for more than was there
        self.skipped_samples = 0  # consumer: samples discarded by skip()

    # -- either side ----------------------------------------------------------------------

    def available(self) -> int:
        """Samples written and not yet consumed (a snapshot: the other side may move)."""
        return self._w - self._r

    def free(self) -> int:
        return self.capacity - (self._w - self._r)

    # -- producer -------------------------------------------------------------------------

    def write(self, pcm: np.ndarray) -> int:
        """Append ``pcm`` (int16); what does not fit is dropped and counted. Returns written."""
        data = np.asarray(pcm, dtype=np.int16).reshape(-1)
        w = self._w
        room = self.capacity - (w - self._r)
        n = min(len(data), room)
        if n < len(data):
            self.overruns += 1
            self.dropped_samples += len(data) - n
        if n <= 0:
            return 0
        start = w % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = data[:first]
        if first < n:
            self._buf[: n - first] = data[first:n]
        self._w = w + n  # publish only after the copy
        return n

    # -- consumer -------------------------------------------------------------------------

    def read(self, n: int) -> np.ndarray | None:
        """The next ``n`` samples (a copy), or ``None`` (counted) if fewer are there."""
        if n <= 0:
            return np.zeros(0, dtype=np.int16)
        r = self._r
        if self._w - r < n:
            self.underruns += 1
            return None
        start = r % self.capacity
        first = min(n, self.capacity - start)
        out = np.empty(n, dtype=np.int16)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:] = self._buf[: n - first]
        self._r = r + n  # publish only after the copy
        return out

    def skip(self, n: int) -> int:
        """Discard up to ``n`` of the oldest samples (the consumer trimming delay)."""
        r = self._r
        n = max(0, min(n, self._w - r))
        self._r = r + n
        self.skipped_samples += n
        return n
