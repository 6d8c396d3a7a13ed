"""``wzp demo``: two handsets on one machine over a lossy link, buttons pressed by a script.

Each handset is the real daemon (:class:`~wzp.daemon.handset.Handset`): its board on
gpiozero's mock pins (the script drives the button pins low and high as a finger
would), audio from recorded speech and into WAV files instead of a sound card, calls
over real QUIC on loopback through :class:`~wzp.net.udpproxy.UdpLossyProxy` (seeded
random loss, delay). LED changes are drawn as text as they happen; at the end the
speech each side heard is scored against what the other side said (STOI, 0..1) and the
run is summarised (loss before and after FEC, tier changes), also as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.files import SAMPLE_RATE, NoCardPort, read_audio
from ..board.board import Board
from ..board.factory import make_factory
from ..board.profile import load_profile
from ..crypto.identity import Identity
from ..net.udpproxy import UdpLossyProxy
from ..sim.link import LinkConfig
from .config import Config, Contact
from .handset import Handset
from .statusfmt import format_status

log = logging.getLogger(__name__)

CODEC2_RAW = Path("/usr/share/codec2/raw")
SPEECH_A = CODEC2_RAW / "speech_orig_16k.wav"
SPEECH_B = CODEC2_RAW / "ve9qrp_10s.raw"

LED_GLYPH = {True: "●", False: "○"}


class DemoAudio(NoCardPort):
    """A handset's "sound card" in the demo: recorded speech when told to speak, a WAV out."""

    def __init__(self, speech: np.ndarray) -> None:
        super().__init__()
        self.speech = speech
        self._pos: int | None = None
        self.heard: list[np.ndarray] = []
        self.spoke_at_sample: int | None = None  # index into ``heard`` of the other side

    def speak(self) -> None:
        self._pos = 0

    def read(self) -> np.ndarray:
        out = np.zeros(960, dtype=np.int16)
        if self._pos is not None:
            chunk = self.speech[self._pos : self._pos + 960]
            out[: len(chunk)] = chunk
            self._pos += 960
            if self._pos >= len(self.speech):
                self._pos = None
        return self._metered_in(out)

    def write(self, pcm: np.ndarray) -> None:
        self._metered_out(pcm)
        self.heard.append(np.asarray(pcm, dtype=np.int16))

    def describe(self) -> str:
        return "files (demo)"

    def heard_samples(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)


def _press(board: Board, factory: Any, role: str, hold_s: float) -> Callable[[], Any]:
    """A finger on ``role``'s button for ``hold_s`` (the mock pin driven as wired)."""
    pin = board.profile.buttons[role]

    async def go() -> None:
        mock = factory.pin(pin.pin)
        press, release = (
            (mock.drive_low, mock.drive_high)
            if pin.active_low
            else (mock.drive_high, mock.drive_low)
        )
        press()
        await asyncio.sleep(hold_s)
        release()

    return go


def _stoi(said: np.ndarray, heard: np.ndarray) -> float | None:
    """STOI of what was heard against what was said (None without the bench extra).

    The heard audio is aligned in 2 s pieces (``align_in_pieces``): the jitter buffer
    may shorten a pause between words (inaudible), which moves the speech after it a
    little earlier; one alignment for the whole recording would score that shift, not
    intelligibility.
    """
    try:
        from pystoi import stoi

        from ..bench.quality import align_delay, align_in_pieces
        from ..bench.speech import resample
    except ImportError:
        return None
    rate = 16_000
    ref = resample(said, SAMPLE_RATE, rate)
    deg = align_delay(ref, resample(heard, SAMPLE_RATE, rate), rate, 2.0)
    out = align_in_pieces(ref, deg, rate)
    return round(float(stoi(ref, out, rate, extended=False)), 3)


async def run_demo(
    out_dir: Path,
    *,
    loss: float = 0.3,
    rtt_ms: float = 300.0,
    talk_s: float = 8.0,
    seed: int = 1,
    speech_a: Path = SPEECH_A,
    speech_b: Path = SPEECH_B,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    speech = {
        "A": read_audio(speech_a)[: int(talk_s * SAMPLE_RATE)],
        "B": read_audio(speech_b)[: int(talk_s * SAMPLE_RATE)],
    }
    ids = {"A": Identity.generate(), "B": Identity.generate()}

    def stamp() -> str:
        return f"[{time.monotonic() - t0:5.1f}s]"

    def leds(name: str, st: dict[str, Any]) -> None:
        link = st["link"] or "-"
        say(
            f"{stamp()} {name} LEDs  status {LED_GLYPH[st['status'] != 'off']} {st['status']:<10}"
            f" link {LED_GLYPH[st['link'] is not None]} {link:<8} tx {LED_GLYPH[bool(st['tx'])]}"
        )

    base = Config.default()

    def config(name: str, contacts: dict[str, Contact], default: str | None) -> Config:
        return dataclasses.replace(
            base,
            board_profile="breadboard",
            pin_factory="mock",
            mode="half-duplex",
            listen_hosts=("127.0.0.1",),
            listen_port=0,
            accept="contacts",
            contacts=contacts,
            default_contact=default,
            control_socket=out_dir / f"{name}.sock",
            control_group=None,
        )

    audio = {n: DemoAudio(speech[n]) for n in "AB"}
    # the mock pins `wzp run` uses with pin_factory = "mock", described as it describes them
    made = {n: make_factory("mock") for n in "AB"}
    factories = {n: made[n][0] for n in "AB"}
    boards = {
        n: Board(load_profile("breadboard"), factories[n], factory_description=made[n][1])
        for n in "AB"
    }
    # B is called: it listens first; A knows it under the proxy's address
    cfg_b = config("b", {"alice": Contact("alice", ids["A"].fingerprint, "127.0.0.1", 9)}, None)
    b = Handset(
        cfg_b, ids["B"], boards["B"], audio["B"], alias="B", control=False, on_led_change=leds
    )
    await b.start()
    assert b.port is not None
    one_way = LinkConfig(loss=loss, delay_s=rtt_ms / 2000)
    proxy = UdpLossyProxy(("127.0.0.1", b.port), one_way, seed=seed)
    await proxy.start()
    cfg_a = config(
        "a", {"bob": Contact("bob", ids["B"].fingerprint, "127.0.0.1", proxy.port)}, "bob"
    )
    a = Handset(
        cfg_a, ids["A"], boards["A"], audio["A"], alias="A", control=False, on_led_change=leds
    )
    await a.start()
    say(
        f"{stamp()} two handsets up; link A<->B: {loss:.0%} random loss each way, "
        f"{rtt_ms:.0f} ms round trip (seed {seed})"
    )
    result: dict[str, Any] = {"loss": loss, "rtt_ms": rtt_ms, "seed": seed}
    try:
        await asyncio.sleep(0.5)
        say(f"{stamp()} A presses CALL (default contact: bob)")
        await _press(boards["A"], factories["A"], "call", 0.15)()
        await _wait(lambda: b.call is not None and b.state_name() == "ringing", 30, "B to ring")
        await asyncio.sleep(1.5)
        say(f"{stamp()} B presses CALL to answer")
        await _press(boards["B"], factories["B"], "call", 0.15)()
        await _wait(
            lambda: a.state_name() == "active" and b.state_name() == "active", 30, "the call"
        )
        # a few seconds of keep-alives measure the link before the first word
        await asyncio.sleep(3.0)
        for name in ("A", "B"):
            other = "B" if name == "A" else "A"
            say(f"{stamp()} {name} holds PTT and speaks for {talk_s:.0f} s")
            press = _press(boards[name], factories[name], "ptt", talk_s + 0.4)
            audio[other].spoke_at_sample = sum(len(x) for x in audio[other].heard)
            audio[name].speak()
            if name == "B":
                # A's status while B's speech comes in: the loss A measures is that of
                # speech over the lossy link (with only B's keep-alives to count, the
                # estimate is scaled down on so few packets)
                talking = asyncio.ensure_future(press())
                await asyncio.sleep(min(3.5, talk_s * 0.75))
                say(f"{stamp()} status of A while B talks (A receives B's speech):")
                say("    " + format_status(a.status()).replace("\n", "\n    "))
                await talking
            else:
                await press()
            say(f"{stamp()} {name} releases PTT")
            await asyncio.sleep(1.5)
        say(f"{stamp()} A holds CALL (long press) to hang up")
        await _press(boards["A"], factories["A"], "call", 1.3)()
        await _wait(lambda: a.call is None and b.call is None, 15, "both to hang up")
        await asyncio.sleep(0.3)
        stats = proxy.stats
        result["link"] = {
            d: {"sent": s.sent, "lost": s.lost, "loss_pct": round(100 * s.loss_rate, 1)}
            for d, s in (("A->B", stats.up), ("B->A", stats.down))
        }
        result["calls"] = {"A": a.last_call, "B": b.last_call}
        result["tier_changes"] = {"A": a.tier_changes, "B": b.tier_changes}
    finally:
        await a.stop()
        await b.stop()
        proxy.close()
        for f in factories.values():
            f.close()

    for name, other in (("A", "B"), ("B", "A")):
        heard = audio[other].heard_samples()
        start = audio[other].spoke_at_sample or 0
        segment = heard[start : start + len(speech[name]) + int(3 * SAMPLE_RATE)]
        _write_wav(out_dir / f"{other.lower()}_heard_{name.lower()}.wav", segment)
        result[f"stoi_{name}_to_{other}"] = _stoi(speech[name], segment)
    result["residual_loss_pct"] = {
        n: h.last_call.get("residual_loss_pct") if h.last_call else None
        for n, h in (("A", a), ("B", b))
    }
    result["seconds"] = round(time.monotonic() - t0, 1)
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    say(_summary(result, out_dir))
    return result


def _summary(r: dict[str, Any], out_dir: Path) -> str:
    lines = ["", "summary"]
    for direction in ("A->B", "B->A"):
        link = r.get("link", {}).get(direction, {})
        talker, listener = direction.split("->")
        st = r.get(f"stoi_{talker}_to_{listener}")
        lines.append(
            f"  {direction}: {link.get('loss_pct', '-')} % of datagrams lost on the link; "
            f"after FEC {_pct(r['residual_loss_pct'].get(listener))} of the speech concealed; "
            f"STOI {'-' if st is None else st} (1.0 = fully intelligible)"
        )
    calls = r.get("calls", {})
    a = calls.get("A") or {}
    changes = r.get("tier_changes", {})
    lines.append(
        f"  call: {a.get('duration_s', '-')} s, ended {a.get('ended', '-')}, "
        f"rekeys {a.get('rekeys', '-')}, tier changes A {changes.get('A')} / B {changes.get('B')}"
    )
    lines.append(f"  heard audio and summary.json in {out_dir}/ ({r['seconds']} s in all)")
    return "\n".join(lines)


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f} %"


async def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"demo: gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def main(out_dir: Path, loss: float, rtt_ms: float, seed: int) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(out_dir, loss=loss, rtt_ms=rtt_ms, seed=seed))
        return 0
    return 130
