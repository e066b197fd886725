"""Helpers shared by the test files (import them from here; never from another test file)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from discord.ext import listening
from discord.ext.listening.opus import FRAME_BYTES, OpusDecoder, OpusEncoder
from discord.ext.listening.receive import PacketReceiver
from discord.ext.listening.rtp import is_rtcp, parse_rtp_header
from discord.ext.listening.ssrc import SSRCMap
from discord.ext.listening.stats import ListenStats
from discord.ext.listening.testing import SpurtRecord, VoiceServerEmulator


class Collect(listening.AudioSink):
    """Keeps every frame and RTCP packet, and what the session told it at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[listening.AudioFrame] = []
        self.rtcp: list[listening.RTCPPacket] = []
        self.stopped_at: int | None = None
        self.cleaned = 0

    def on_audio(self, frame: listening.AudioFrame) -> None:
        self.frames.append(frame)

    def on_rtcp(self, packet: listening.RTCPPacket) -> None:
        self.rtcp.append(packet)

    def on_stop(self, position: int) -> None:
        self.stopped_at = position

    def cleanup(self) -> None:
        self.cleaned += 1

    def by_user(self) -> dict[int | None, list[listening.AudioFrame]]:
        out: dict[int | None, list[listening.AudioFrame]] = defaultdict(list)
        for f in self.frames:
            out[f.user_id].append(f)
        return out


async def listen_until_done(
    vc: listening.VoiceClient, sink: listening.AudioSink, pool: object, **kw: object
) -> asyncio.Event:
    """Start listening; the returned event is set when ``after`` ran (its calls in ``.results``)."""
    done = asyncio.Event()
    results: list[object] = []

    async def after(s: listening.AudioSink, exc: BaseException | None, **extra: object) -> None:
        results.append((s, exc, extra))
        done.set()

    vc.listen(sink, pool, after=after, **kw)  # type: ignore[arg-type]
    done.results = results  # type: ignore[attr-defined]
    return done


def reference(spurts: list[SpurtRecord]) -> dict[int, bytes]:
    """What a lossless receiver decodes for each sequence number of a member's spurts."""
    dec = OpusDecoder()
    return {f.sequence: dec.decode(f.opus) for s in spurts for f in s.frames}


async def connect_and_listen(
    server: VoiceServerEmulator,
    pool: object,
    sink: listening.AudioSink | None = None,
    *,
    cls: type = listening.VoiceClient,
    **kw: object,
) -> tuple[listening.VoiceClient, Collect, asyncio.Event]:
    """Connect the bot to the emulator and start listening into ``sink`` (a new Collect by default)."""
    vc = await server.connect(cls=cls)
    sink = Collect() if sink is None else sink
    done = await listen_until_done(vc, sink, pool, **kw)
    return vc, sink, done  # type: ignore[return-value]


def wait_until(condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.002) -> None:
    """Wait (bounded) on a thread, not the event loop, until ``condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def decode_worker(vc: listening.VoiceClient) -> int:
    """The decode worker of a listening session whose speakers all share one (a small guild:
    the pool fills one worker before it uses the next)."""
    session = vc._listening
    assert session is not None
    workers = set(session._worker_of.values()) or set(session._streams)
    assert len(workers) == 1, workers
    return workers.pop()


async def stop_listening(vc: listening.VoiceClient, done: asyncio.Event, timeout: float = 15) -> None:
    """Stop listening and wait until ``after`` ran."""
    vc.stop_listening()
    await asyncio.wait_for(done.wait(), timeout)


def sync_keys(receiver: PacketReceiver, conn: Any) -> None:
    """Tell ``receiver`` the keys of ``conn`` (``mode``, ``secret_key``, ``dave_session``,
    ``dave_protocol_version``), as the voice client does after each voice gateway message."""
    receiver.set_transport(conn.mode, conn.secret_key)
    receiver.set_dave(conn.dave_session, conn.dave_protocol_version)


def receiver_for(conn: Any, ssrc_map: SSRCMap, stats: ListenStats | None = None, **kw: Any) -> PacketReceiver:
    """A :class:`PacketReceiver` (timeline origin 0) that knows ``conn``'s keys."""
    receiver = PacketReceiver(ssrc_map, ListenStats() if stats is None else stats, origin=0.0, **kw)
    sync_keys(receiver, conn)
    return receiver


# -- waiting for conditions (instead of sleeping) ---------------------------------------------------

#: ``(member, spurts)``: a simulated member and the spurts it sent (``SpurtRecord``).
Spoken = tuple[Any, Iterable[SpurtRecord]]


class WireTap:
    """Records when each RTP packet to the bot really left the emulator (monotonic clock)."""

    def __init__(self, server: VoiceServerEmulator) -> None:
        self.sent: dict[tuple[int, int], float] = {}
        transport = server.media._transport
        real = transport.sendto

        def sendto(data: bytes, addr: Any = None) -> None:
            if len(data) > 12 and not is_rtcp(data):
                h = parse_rtp_header(data)
                self.sent.setdefault((h.ssrc, h.sequence), time.monotonic())
            real(data, addr)

        transport.sendto = sendto

    def lateness(self, server: VoiceServerEmulator, member: Any, spurt: SpurtRecord) -> int:
        """Samples by which the spurt's first packet left after it was due (0 if on time)."""
        frame = spurt.frames[0]
        sent = self.sent[(member.ssrc, frame.sequence)]
        return max(0, round((sent - server._to_loop_time(frame.send_time)) * 48000))


async def wait_or_fail(server: VoiceServerEmulator, predicate: Any, timeout: float, explain: Any) -> None:
    """``server.wait_until(predicate)``, failing the test with ``explain()`` after ``timeout`` s."""
    try:
        await server.wait_until(predicate, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"after {timeout}s: {explain()}") from None


async def settle(
    server: VoiceServerEmulator,
    vc: listening.VoiceClient,
    *spoken: Spoken,
    wire: WireTap | None = None,
    allow_socket_drops: bool = False,
    timeout: float = 10.0,
) -> None:
    """Wait (bounded) until the receiver has seen every frame of ``(member, spurts)`` pairs.

    Stopping right after the last datagram was sent races with discord.py's socket thread:
    on a loaded machine the last packets (a spurt's five silence frames) may still sit in
    the kernel's buffer, and a stopped session never reads them; a session that goes on
    only hears them later. Stopping after this is safe: stop flushes the jitter buffers and
    drains the decoders, so everything received reaches the sink.

    ``wire``: count only the frames that left the emulator (the network impairment lost the
    others). ``allow_socket_drops``: as many frames as the kernel dropped because this
    connection's receive buffer was full (``listen_stats.socket_drops``: a starved receive
    thread's loss is the network's) are not waited for. Call it after ``server.drain()``.

    Raises
    ------
    AssertionError
        Frames still missing after ``timeout`` seconds, member by member.
    """
    stats = vc.listen_stats
    assert stats is not None, "not listening"
    wanted = [(m, [f.sequence for s in spurts for f in s.frames]) for m, spurts in spoken]

    def missing() -> dict[str, int]:
        out = {}
        for m, seqs in wanted:
            expected = len(seqs) if wire is None else sum((m.ssrc, q) in wire.sent for q in seqs)
            short = expected - stats.user(m.user_id).received
            if short > 0:
                out[m.name] = short
        return out

    def allowance() -> int:
        return stats.socket_drops if allow_socket_drops else 0

    await wait_or_fail(
        server,
        lambda: sum(missing().values()) <= allowance(),
        timeout,
        lambda: f"the receiver has not seen every frame: missing {missing()} (socket drops {allowance()})",
    )


async def wait_for_sink(
    server: VoiceServerEmulator, vc: listening.VoiceClient, *spoken: Spoken, timeout: float = 10.0
) -> None:
    """Wait (bounded) until the sink's ``on_audio`` has returned for as many frames of each
    member as ``(member, spurts)`` pairs hold (what a test that reads any sink while listening
    goes on waits for; the session counts a frame before its batch reaches the sink, hence
    the empty queue). Fails like :func:`settle`.
    """
    session = vc._listening
    assert session is not None, "not listening"
    wanted = [(m, sum(len(s.frames) for s in spurts)) for m, spurts in spoken]

    def missing() -> dict[str, int]:
        short = {m.name: n - session.stats.user(m.user_id).frames for m, n in wanted}
        return {name: n for name, n in short.items() if n > 0}

    await wait_or_fail(
        server,
        lambda: not missing() and not session._queued,
        timeout,
        lambda: f"the sink has not got every frame: missing {missing()}, {session._queued} queued",
    )


# -- audio comparisons -------------------------------------------------------------------------


def as_array(pcm: Any) -> np.ndarray:
    """48 kHz stereo s16le bytes (or anything array-like) as a float array of shape (n, 2)."""
    if isinstance(pcm, (bytes, bytearray)):
        return np.frombuffer(pcm, dtype="<i2").reshape(-1, 2).astype(np.float64)
    return np.asarray(pcm, dtype=np.float64).reshape(-1, 2)


def envelope(pcm: Any) -> np.ndarray:
    """RMS per 20 ms: robust to the codec's phase and a few ms of offset."""
    a = as_array(pcm).mean(axis=1)
    n = len(a) // 960
    return np.sqrt((a[: n * 960].reshape(n, 960) ** 2).mean(axis=1))


def locate(track: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """(correlation, offset): where the envelope ``ref`` best lines up inside ``track``."""
    best = (-1.0, 0)
    for offset in range(len(track) - len(ref) + 1):
        t = track[offset : offset + len(ref)]
        if t.std() > 0:
            best = max(best, (float(np.corrcoef(t, ref)[0, 1]), offset))
    return best


def first_voiced_time(server: VoiceServerEmulator, spurt: SpurtRecord) -> float:
    """When the member's client captured the spurt's first audible frame (the loop's clock):
    what was said starts then, however late the packet left (the loop may be busy)."""
    from discord.ext.listening.stream import SILENT_PEAK

    dec = OpusDecoder()
    for f in spurt.frames:
        if int(np.abs(np.frombuffer(dec.decode(f.opus), "<i2")).max()) > SILENT_PEAK:
            return float(server._to_loop_time(f.send_time))
    raise AssertionError("a silent spurt")


def voiced_pcm(seconds: float, seed: int = 0) -> bytes:
    """Voiced, speech-like stereo s16le PCM (a gliding harmonic tone with an envelope), the
    kind of signal for which Opus runs SILK and embeds FEC."""
    rng = np.random.default_rng(seed)
    n = int(48000 * seconds)
    t = np.arange(n) / 48000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / 48000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t + seed)) * 5000 + rng.normal(0, 200, n)
    return np.repeat(np.clip(x, -32000, 32000).astype("<i2"), 2).tobytes()


def opus_packets(seconds: float, seed: int = 0, expected_loss: int = 20) -> list[bytes]:
    """Opus packets of :func:`voiced_pcm`, with in-band FEC as Discord clients send it."""
    enc = OpusEncoder(expected_loss=expected_loss)
    pcm = voiced_pcm(seconds, seed)
    return [enc.encode(pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
