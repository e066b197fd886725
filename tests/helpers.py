"""Helpers shared by the test files (import them from here; never from another test file)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from discord.ext import listening
from discord.ext.listening.opus import OpusDecoder
from discord.ext.listening.receive import PacketReceiver
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
