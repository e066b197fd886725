"""Listening started and stopped over and over leaves nothing behind.

A bot that records meetings starts and stops listening all day in many guilds: every
``listen()`` joins the receive engine and the sink dispatcher, places its speakers on the decode
workers and opens decode streams, and every stop must take them all back. Here real voice connections to local voice servers (real UDP, real
websockets, a real decode pool) cycle through ``listen`` / ``stop_listening`` while their
members speak now and then; afterwards the bot has exactly the threads, child processes and
open file descriptors it had after the first cycle, the decode pool holds no stream, and each
cycle's sink was told its stop and cleaned up once.

The short form (10 connections x 10 cycles) runs in CI. The long form, issue 12's bound of
1,000 cycles over 50 connections, is marked ``soak`` and runs with ``LISTENING_SOAK=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

import psutil
import pytest

from discord.ext import listening
from discord.ext.listening import dispatch
from discord.ext.listening.engine import default_engine
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import Collect, listen_until_done

pytestmark = pytest.mark.timeout(600)


def _footprint() -> tuple[int, set[int], int]:
    me = psutil.Process()
    children = {c.pid for c in me.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE}
    return threading.active_count(), children, me.num_fds()


async def _cycle(vc: listening.VoiceClient, pool: listening.AudioProcessPool, member: object | None) -> Collect:
    sink = Collect()
    done = await listen_until_done(vc, sink, pool)
    if member is not None:
        await member.speak(speechlike(0.1, seed=len(sink.frames)))  # type: ignore[attr-defined]
    vc.stop_listening()
    await asyncio.wait_for(done.wait(), 30)
    await vc.wait_for_listen_ready(timeout=30)
    assert done.results == [(sink, None, {})]  # type: ignore[attr-defined]
    assert sink.cleaned == 1
    return sink


async def _warm_pool(pool: listening.AudioProcessPool) -> None:
    """Every worker up: workers start with their first stream and then stay, by design."""
    streams = [pool.open_stream(i, lambda frames: None) for i in range(pool.max_processes)]
    for _ in range(300):
        if all(s.inc is not None and s.inc.ready for s in pool._slots):
            break
        await asyncio.sleep(0.1)
    for stream in streams:
        stream.close()


async def _quiet() -> None:
    """Wait (bounded) for the threads that only live while there is work: the engine's (it ends
    with its last session) and the sink dispatcher's (they end when idle)."""
    engine = default_engine()
    for _ in range(100):
        if not engine.running and engine.sinks.threads == 0:
            return
        await asyncio.sleep(0.05)


async def _run(connections: int, cycles: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(dispatch, "IDLE_EXIT", 0.2)
        pool = stack.enter_context(listening.AudioProcessPool(2))
        await _warm_pool(pool)
        servers = [await stack.enter_async_context(VoiceServerEmulator(seed=100 + i)) for i in range(connections)]
        vcs = [await server.connect(cls=listening.VoiceClient) for server in servers]
        members = [await server.add_member(700 + i, f"member{i}") for i, server in enumerate(servers)]
        # The first cycle starts what is meant to stay (the pool's workers, discord.py's threads).
        await asyncio.gather(*(_cycle(vc, pool, None) for vc in vcs))
        await _quiet()
        threads, children, fds = _footprint()
        heard = 0
        for n in range(cycles - 1):
            # every third cycle someone speaks while the bot listens
            sinks = await asyncio.gather(
                *(_cycle(vc, pool, m if (n + i) % 3 == 0 else None) for i, (vc, m) in enumerate(zip(vcs, members)))
            )
            heard += sum(len(s.frames) for s in sinks)
        assert heard > 0  # the cycles did carry audio
        await _quiet()
        for _ in range(50):  # threads end just after they signal: give them a moment
            if _footprint() == (threads, children, fds):
                break
            await asyncio.sleep(0.1)
        # every decode stream was closed and forgotten, every speaker given back: the pool
        # holds nothing per cycle
        assert [len(slot.streams) for slot in pool._slots] == [0] * pool.max_processes
        assert pool.speakers == [0] * pool.max_processes
        assert _footprint() == (threads, children, fds), (
            f"after {connections * cycles} listen/stop cycles: (threads, children, fds) {(threads, children, fds)} "
            f"-> {_footprint()}; threads now {[t.name for t in threading.enumerate()]}"
        )
        for vc in vcs:
            await vc.disconnect(force=True)


async def test_listen_stop_cycles_leak_no_threads_processes_or_descriptors() -> None:
    await _run(connections=10, cycles=10)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_a_thousand_listen_stop_cycles_over_fifty_connections_leak_nothing() -> None:
    if not os.environ.get("LISTENING_SOAK"):
        pytest.skip("soak test: set LISTENING_SOAK=1")
    await _run(connections=50, cycles=20)
