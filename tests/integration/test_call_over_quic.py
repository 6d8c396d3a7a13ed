"""Two handsets in separate processes call each other over real QUIC through a lossy link.

The callee is a ``wzp listen`` subprocess; the caller runs in the test process (so the
test can see every codec frame its encoder produced) and dials through an in-process
lossy UDP proxy with 300 ms one-way delay. Both send recorded speech; the test checks
from the output files that speech arrived (STOI), reads every raw UDP payload on the
wire for plaintext codec frames, and checks that both sides rekeyed during the call.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from wzp.audio.files import Discard, FileSink, FileSource, Silence, read_audio
from wzp.bench.quality import align_delay, align_in_pieces
from wzp.bench.speech import DEFAULT_SPEECH
from wzp.crypto.identity import Identity
from wzp.daemon.identity_store import write_seed
from wzp.media.call import CallEngine
from wzp.media.codecs import TierCodec, make_frame_decoder
from wzp.net.callrunner import CallRunner
from wzp.net.quic import connect_wzp
from wzp.net.udpproxy import UdpLossyProxy
from wzp.proto.session import EndReason
from wzp.sim.link import LinkConfig

CALL_S = 20.0
ONE_WAY_S = 0.3
#: STOI of what each side heard against what the other sent, from SETTLED_S into the
#: speech on. The media benchmark (bench/results/quality.json) measures 0.98-0.99 at 0 %
#: and 30 % random loss and 0.88 at 60 % after a warm-up. A live call starts in the
#: negotiated tier and needs a few reports (and, at 60 % loss, retransmitted signalling:
#: the call is set up 2-3 s after dialing) before its tier fits the link, so the first
#: SETTLED_S seconds are left out and the thresholds leave room for timing on a loaded
#: machine and the files' resampling.
SETTLED_S = 6.0
#: At 60 % the live call still changes tier inside the scored part in some runs (the
#: controller climbs to Codec2 while its reports cross the same 60 % link), and each
#: change steps the playout delay, which STOI, a frame-aligned measure, punishes though
#: the frames arrived: over 8 runs here the callee scored 0.50-0.98 and the caller
#: 0.86-0.89. The 60 % bound asks for speech that is still largely intelligible.
STOI_MIN = {0.0: 0.9, 0.3: 0.85, 0.6: 0.45}


def _wzp() -> list[str]:
    exe = Path(sys.executable).with_name("wzp")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "wzp.cli"]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingCodec(TierCodec):
    """The real encoder, remembering every payload it produced."""

    frames: ClassVar[list[bytes]] = []

    def encode(self, pcm48: np.ndarray) -> bytes:
        out = super().encode(pcm48)
        RecordingCodec.frames.append(out)
        return out


def _locate(ref: np.ndarray, heard: np.ndarray, rate: int) -> np.ndarray:
    """The stretch of ``heard`` where ``ref`` is, found by its 5 ms energy envelope
    (Codec2 does not keep the waveform, so envelopes, not samples, are compared)."""
    hop = rate // 200

    def env(x: np.ndarray) -> np.ndarray:
        m = len(x) // hop
        e = np.sqrt(np.mean(x[: m * hop].reshape(m, hop) ** 2, axis=1))
        return np.log1p(e)

    er, eh = env(ref), env(heard)
    er = (er - er.mean()) / (er.std() + 1e-9)
    best, best_o = -np.inf, 0
    for o in range(0, max(1, len(eh) - len(er) + 1)):
        w = eh[o : o + len(er)]
        if len(w) < len(er):
            break
        score = float(np.dot(er, (w - w.mean()) / (w.std() + 1e-9)))
        if score > best:
            best, best_o = score, o
    start = best_o * hop
    out = np.zeros(len(ref))
    seg = heard[start : start + len(ref)]
    out[: len(seg)] = seg
    return out


def _stoi(sent: np.ndarray, heard_path: Path, skip_s: float = 0.0) -> float:
    """STOI of the sent speech from ``skip_s`` on, against where it is in what was heard.

    That part is located on its own: the far end records from its connection on, the
    speech starts once the call is up (several retransmitted round trips on a lossy
    link), and a tier change early in the call steps the playout delay. Later steps
    are followed piece by piece (``align_in_pieces``).
    """
    from pystoi import stoi
    from scipy.signal import resample_poly

    heard = read_audio(heard_path).astype(np.float64)
    ref16 = resample_poly(sent.astype(np.float64), 1, 3)[int(skip_s * 16_000) :]
    deg16 = resample_poly(heard, 1, 3)
    located = _locate(ref16, deg16, 16_000)
    # refine to the sample (Opus keeps the waveform; for Codec2 this changes little)
    located = align_delay(ref16, located, 16_000, max_lag_s=0.05)
    # or in 2 s pieces, as the demo scores, whichever fits better: the jitter buffer
    # shrinks its delay in pauses (and grows it when the far end's block span grows),
    # which shifts the speech after the step, and one alignment scores that shift
    # (caller at 30 %: 0.845 with nothing concealed); the pieces' seams cost a few
    # hundredths when there is no step (0 %: 0.93 against 0.98)
    pieces = align_in_pieces(ref16, located, 16_000)
    return max(float(stoi(ref16, located, 16_000)), float(stoi(ref16, pieces, 16_000)))


@pytest.mark.parametrize("loss", sorted(STOI_MIN))
async def test_call_between_two_processes_through_a_lossy_link(tmp_path: Path, loss: float):
    speech = DEFAULT_SPEECH
    assert speech.exists(), "run ./install.sh --dev (codec2-examples)"
    a_id, b_id = Identity.generate(), Identity.generate()
    write_seed(tmp_path / "b.seed", b_id.seed_bytes())
    port = _free_udp_port()
    listener = await asyncio.create_subprocess_exec(
        *_wzp(), "listen", "--identity", str(tmp_path / "b.seed"), "--port", str(port),
        "--host", "127.0.0.1", "--once", "--in", str(speech), "--out",
        str(tmp_path / "heard_by_b.wav"), "--rekey-after", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        line = await asyncio.wait_for(listener.stdout.readline(), 20)
        assert b"listening on port" in line, line
        wire: list[bytes] = []
        RecordingCodec.frames = []
        async with UdpLossyProxy(
            ("127.0.0.1", port), LinkConfig(delay_s=ONE_WAY_S), seed=int(loss * 100),
            tap=lambda direction, data: wire.append(data),
        ) as proxy:  # fmt: skip
            conn = await connect_wzp("127.0.0.1", proxy.port, a_id, b_id.fingerprint, timeout=20)
            # the QUIC handshake is up; from here on the link loses packets: the call's
            # set-up, media, rekeys and hang-up all cross the lossy link
            proxy.set_config("both", LinkConfig(loss=loss, delay_s=ONE_WAY_S))
            engine = CallEngine(a_id, RecordingCodec, make_frame_decoder, rekey_after_s=4)
            sink = FileSink(tmp_path / "heard_by_a.wav")
            runner = CallRunner(  # status lines: pytest shows them when the test fails
                engine, conn, FileSource(speech), sink, on_status=lambda st: print(st.line())
            )
            runner.dial(b_id.fingerprint)
            reason = await runner.run(max_duration=CALL_S)
            await conn.aclose(runner.close_phrase())
            sink.close()
            # the link stays up while the callee finishes: on a 60 % link its last copy
            # of our Hangup (or our CONNECTION_CLOSE) may need several more round trips
            out, err = await asyncio.wait_for(listener.communicate(), 35)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    text = out.decode()
    assert reason is EndReason.NORMAL, (reason, engine.session.end_detail)
    assert "call ended: Normal" in text, text + err.decode()
    # both sides rekeyed during the call
    assert engine.stats.rekeys >= 1
    rekeys_b = int(re.search(r"rekeys (\d+)", text.split("call ended:")[1]).group(1))  # type: ignore[union-attr]
    assert rekeys_b >= 1
    # speech arrived both ways
    sent = read_audio(speech)
    stoi_b = _stoi(sent, tmp_path / "heard_by_b.wav", SETTLED_S)
    stoi_a = _stoi(sent, tmp_path / "heard_by_a.wav", SETTLED_S)
    print(f"\n[call] loss {loss:.0%}: STOI heard by callee {stoi_b:.3f}, by caller {stoi_a:.3f}")
    assert stoi_b >= STOI_MIN[loss] and stoi_a >= STOI_MIN[loss]
    # nothing on the wire is a plaintext codec frame (QUIC and our media AEAD both encrypt)
    frames = [f for f in RecordingCodec.frames if len(f) >= 12]
    assert len(frames) > 50 and len(wire) > 100
    blob = b"\x00".join(wire)
    assert not any(f[:12] in blob for f in frames)


async def _start_listener(tmp_path: Path, b_id: Identity, *extra: str):  # type: ignore[no-untyped-def]
    write_seed(tmp_path / "b.seed", b_id.seed_bytes())
    port = _free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        *_wzp(), "listen", "--identity", str(tmp_path / "b.seed"), "--port", str(port),
        "--host", "127.0.0.1", "--once", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert b"listening on port" in line, line
    return proc, port


async def test_hangup_by_the_callee_ends_both_within_2_s(tmp_path: Path) -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    proc, port = await _start_listener(tmp_path, b_id, "--duration", "4")
    try:
        conn = await connect_wzp("127.0.0.1", port, a_id, b_id.fingerprint, timeout=20)
        engine = CallEngine(a_id, TierCodec, make_frame_decoder)
        runner = CallRunner(engine, conn, Silence(), Discard())
        runner.dial(b_id.fingerprint)
        reason = await asyncio.wait_for(runner.run(max_duration=30), 30)
        ended = [e for e in engine.take_events() if e.state.value == "closed"]
        await conn.aclose(runner.close_phrase())
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert reason is EndReason.NORMAL
    assert engine.session.end_detail == "peer hung up"
    # the callee hung up 4 s into the call; the caller knew within 2 s
    active_at = engine.session.history[-2].at if len(engine.session.history) > 1 else 0.0
    closed_at = ended[0].at
    assert closed_at - active_at < 4.0 + 2.0
    assert "call ended: Normal (hung up here)" in out.decode()


async def test_killed_peer_ends_the_call_with_timeout(tmp_path: Path) -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    proc, port = await _start_listener(tmp_path, b_id)
    conn = await connect_wzp("127.0.0.1", port, a_id, b_id.fingerprint, timeout=20)
    engine = CallEngine(a_id, TierCodec, make_frame_decoder)
    runner = CallRunner(engine, conn, Silence(), Discard())
    runner.dial(b_id.fingerprint)
    task = asyncio.create_task(runner.run(max_duration=60))
    await asyncio.sleep(3)
    proc.kill()  # no Hangup, no CONNECTION_CLOSE: the process is just gone
    await proc.wait()
    killed_at = runner.now()
    reason = await asyncio.wait_for(task, 40)
    await conn.aclose()
    assert reason is EndReason.TIMEOUT
    assert runner.now() - killed_at <= 30 + 2  # QUIC idle timeout 30 s


async def test_a_20_s_path_outage_keeps_the_call_and_audio_resumes(tmp_path: Path) -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    speech = DEFAULT_SPEECH
    proc, port = await _start_listener(tmp_path, b_id, "--in", str(speech))
    try:
        async with UdpLossyProxy(("127.0.0.1", port), LinkConfig(delay_s=0.15)) as proxy:
            conn = await connect_wzp("127.0.0.1", proxy.port, a_id, b_id.fingerprint)
            engine = CallEngine(a_id, TierCodec, make_frame_decoder)
            runner = CallRunner(engine, conn, FileSource(speech, loop=True), Discard())
            runner.dial(b_id.fingerprint)
            task = asyncio.create_task(runner.run(max_duration=40))

            def frames_heard() -> int:
                assert engine.media is not None
                return sum(
                    s.playout.stats.decoded + s.playout.stats.recovered
                    for s in engine.media.receiver.streams.values()
                )

            while engine.media is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)
            before = frames_heard()
            assert before > 10
            proxy.blackout(20.0)  # nothing crosses, either way
            await asyncio.sleep(20.5)
            during = frames_heard()
            assert engine.state.value == "active"  # the call survived the outage
            await asyncio.sleep(4.0)
            after = frames_heard()
            assert during - before < 20  # nothing was heard in the outage (a queue drained)
            assert after - during > 20  # audio came back by itself
            engine.hangup(runner.now())
            await task
            await conn.aclose(runner.close_phrase())
        await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
