"""What listening costs on silent connections, in a fresh process: N voice connections, nobody speaking.

``python engine_idle.py --connections 200 --seconds 5``

Two processes, so that the voice servers' CPU is not counted as the bot's:

* this one is the bot: N token-less :class:`discord.Client` (the emulator's own
  :class:`~discord.ext.listening.testing.harness.ClientHarness`, one guild each), each connected
  with the real ``channel.connect(cls=listening.VoiceClient)``;
* a child (this file with ``--serve``) runs the N :class:`VoiceServerEmulator` (one guild each).
  Its emulators get a stand-in for their client harness that forwards over a socket pair:
  op 4 from the bot's clients one way, the VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE (and
  member) dispatches the other way; the voice websocket and UDP go over 127.0.0.1 as always.

The emulators keep their Discord-like defaults (DAVE on, SFU receiver reports every 5 s, media
withheld after 30 s of silence from the bot, the bot's keepalives answered as Discord does): that
is real traffic an idle bot sees. No member is in the channels, so no member speaks; padding
bursts and sender reports come only with speech, so none is sent either.

Measured in one run, on the same connections: CPU per second of the bot's whole process tree
(this process, every thread, and its children but the servers: decode workers, forkserver) while
connected but not listening, then while every connection listens (``listen(sink, pool)``, decode
on, one 2-worker :class:`AudioProcessPool` for all, as a recording bot does), each over
``--seconds``. CPU is read to the nanosecond (``common.children_threads_cpu``), not in clock ticks.

Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from scenario import CHANNEL_BASE, GUILD_BASE, OTHER_BASE, listening_sink

BATCH = 50  # connections set up at a time


def log(msg: str) -> None:
    print(f"[engine_idle {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _lines(reader: asyncio.StreamReader) -> Any:
    while line := await reader.readline():
        yield json.loads(line)


def _send(writer: asyncio.StreamWriter, **msg: Any) -> None:
    writer.write(json.dumps(msg).encode() + b"\n")


# -- the servers' process ------------------------------------------------------------------------


class RemoteHarness:
    """What an emulator calls on its client harness, forwarded to the bot's process."""

    def __init__(self, guild_id: int, writer: asyncio.StreamWriter) -> None:
        self.guild_id = guild_id
        self._writer = writer

    @property
    def guild(self) -> Any:
        # wait_dave_ready() looks for the bot's davey session in its client's cache: it is in
        # the other process. A bot alone in its call has no group to be in, and then the
        # emulator needs no session to say DAVE settled (its key package arrived).
        return types.SimpleNamespace(voice_client=None)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def add_member(self, user_id: int, name: str) -> None:
        _send(self._writer, op="member", g=self.guild_id, u=user_id, n=name)

    def dispatch_voice_state(
        self, user_id: int, channel_id: int | None, session_id: str, *, self_mute: bool = False, self_deaf: bool = False
    ) -> None:
        _send(self._writer, op="vs", g=self.guild_id, u=user_id, c=channel_id, s=session_id, m=self_mute, d=self_deaf)

    def dispatch_voice_server(self, token: str, endpoint: str | None) -> None:
        _send(self._writer, op="vsu", g=self.guild_id, t=token, e=endpoint)


async def serve(fd: int, count: int) -> None:
    from discord.ext.listening.testing import VoiceServerEmulator
    from discord.ext.listening.testing import emulator as emulator_module

    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=1 << 22)
    op4: dict[int, Any] = {}

    def remote_harness(settings: Any, gateway: Any, control: Any) -> RemoteHarness:
        # Replaces wiring.new_harness for this process's emulators: their client lives in the bot's.
        op4[settings.guild_id] = control.on_voice_state_request
        return RemoteHarness(settings.guild_id, writer)

    emulator_module.new_harness = remote_harness  # type: ignore[attr-defined,assignment]
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for j in range(count):
            server = VoiceServerEmulator(
                seed=3000 + j,
                guild_id=GUILD_BASE + j,
                channel_id=CHANNEL_BASE + j,
                other_channel_id=OTHER_BASE + j,
            )  # every other setting: the emulator's Discord-like default
            servers.append(await stack.enter_async_context(server))
        first = servers[0]
        _send(
            writer,
            op="hello",
            guilds=[[s.guild_id, s.channel_id, s.other_channel_id] for s in servers],
            bot=[first.bot_user_id, first.bot_name],
            host=first.gateway.host,
        )
        await writer.drain()
        async for msg in _lines(reader):
            if msg["op"] == "op4":
                await op4[msg["g"]](msg["g"], msg["c"], msg["m"], msg["d"])
            elif msg["op"] == "settle":
                if first.dave_enabled:
                    for i in range(0, count, BATCH):
                        await asyncio.gather(*(s.wait_dave_ready(timeout=120) for s in servers[i : i + BATCH]))
                withheld = sum(s.media_withheld for s in servers)
                _send(writer, op="settled", withheld=withheld)
            elif msg["op"] == "quit":
                break
            await writer.drain()


# -- the bot's process ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from discord.ext import listening
    from discord.ext.listening.testing.harness import ClientHarness

    ours, theirs = socket.socketpair()
    server_proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            str(theirs.fileno()),
            "--connections",
            str(args.connections),
        ],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 22)
    result: dict[str, Any] = {"connections": args.connections, "seconds": args.seconds}
    harnesses: dict[int, ClientHarness] = {}
    settled = asyncio.get_running_loop().create_future()
    t_setup = time.perf_counter()

    async def dispatcher(messages: Any) -> None:
        async for msg in messages:
            op, h = msg["op"], harnesses.get(msg.get("g", 0))
            if op == "settled":
                if not settled.done():
                    settled.set_result(msg)
                continue
            if h is None:
                continue
            if op == "member":
                h.add_member(msg["u"], msg["n"])
                continue
            if op == "vs":
                h.dispatch_voice_state(msg["u"], msg["c"], msg["s"], self_mute=msg["m"], self_deaf=msg["d"])
            elif op == "vsu":
                h.dispatch_voice_server(msg["t"], msg["e"])
            # Two events that reach the bot in one read must not be handled in one loop
            # iteration: discord.py 2.7.1's connect waits for its state with an Event that it
            # sets and clears at once, and a waiter that has not started waiting yet misses
            # the second change and hangs. Gateway frames come apart; so do these.
            await asyncio.sleep(0.005)
        if not settled.done():
            settled.set_exception(RuntimeError(f"the servers' process ended (exit {server_proc.poll()})"))

    messages = _lines(reader)
    hello = await asyncio.wait_for(anext(messages), 300)
    assert hello["op"] == "hello", hello
    pool = listening.AudioProcessPool(2)
    vcs: list[Any] = []
    task = asyncio.create_task(dispatcher(messages))
    try:
        for guild_id, channel_id, other_id in hello["guilds"]:

            async def op4(g: int, c: int | None, m: bool, d: bool) -> None:
                _send(writer, op="op4", g=g, c=c, m=m, d=d)
                await writer.drain()

            h = ClientHarness(
                guild_id=guild_id,
                channel_ids=(channel_id, other_id),
                bot_user_id=hello["bot"][0],
                bot_name=hello["bot"][1],
                ws_host=hello["host"],
                on_voice_state=op4,
            )
            await h.start()
            harnesses[guild_id] = h
        channels = [h.guild.get_channel(h.channel_ids[0]) for h in harnesses.values()]
        for i in range(0, len(channels), BATCH):
            vcs += await asyncio.gather(
                *(c.connect(cls=listening.VoiceClient, timeout=120) for c in channels[i : i + BATCH])  # type: ignore[union-attr]
            )
            log(f"{len(vcs)} connected")
        _send(writer, op="settle")
        await writer.drain()
        await asyncio.wait_for(settled, 300)
        result["setup_s"] = time.perf_counter() - t_setup
        await asyncio.sleep(2.0)  # the last handshakes' work done

        me = psutil.Process()

        def children() -> list[int]:
            return [p.pid for p in me.children(recursive=True) if p.pid != server_proc.pid]

        def window(name: str) -> None:
            result[f"{name}_threads"] = threading.active_count()
            result[f"{name}_uss_mb"] = common.uss([os.getpid(), *children()]) / 2**20

        async def measure(name: str) -> None:
            kids, servers = children(), [server_proc.pid]
            s0, own0, k0, t0 = (
                common.children_threads_cpu(servers),
                time.process_time(),
                common.children_threads_cpu(kids),
                time.monotonic(),
            )
            await asyncio.sleep(args.seconds)
            own1, k1, t1 = time.process_time(), common.children_threads_cpu(kids), time.monotonic()
            s1 = common.children_threads_cpu(servers)
            kids_cpu = common.cpu_between(k0, k1)
            result[f"{name}_cpu_ms_per_s"] = 1000 * (own1 - own0 + kids_cpu) / (t1 - t0)
            result[f"{name}_children_cpu_ms_per_s"] = 1000 * kids_cpu / (t1 - t0)  # decode workers, forkserver
            result[f"{name}_processes"] = 1 + len(kids)
            # Not the bot's: what the voice servers spent meanwhile (informative).
            result[f"{name}_servers_cpu_ms_per_s"] = 1000 * common.cpu_between(s0, s1) / (t1 - t0)

        window("connected")
        await measure("connected")
        sinks = [listening_sink(True) for _ in vcs]
        for vc, sink in zip(vcs, sinks):
            vc.listen(sink, pool)
        # Every worker started and settled first: a worker's start-up (its imports, ~0.1-0.5 s
        # of CPU) inside the window would be most of what it measures.
        for _ in range(300):
            if all(slot.inc is not None and slot.inc.ready for slot in pool._slots):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        window("listening")
        await measure("listening")
        result["frames_delivered"] = sum(len(s.times) + s.other for s in sinks)  # 0: nobody spoke
        result["added_ms_per_s"] = result["listening_cpu_ms_per_s"] - result["connected_cpu_ms_per_s"]
        result["added_ms_per_s_per_connection"] = result["added_ms_per_s"] / len(vcs)
        result["loadavg"] = os.getloadavg()
        for vc in vcs:
            vc.stop_listening()
        log("stopped listening")
        await asyncio.sleep(0.5)
        for i in range(0, len(vcs), BATCH):
            await asyncio.gather(*(vc.disconnect(force=True) for vc in vcs[i : i + BATCH]), return_exceptions=True)
        log("disconnected")
    finally:
        hs = list(harnesses.values())
        for i in range(0, len(hs), BATCH):
            await asyncio.gather(*(h.close() for h in hs[i : i + BATCH]), return_exceptions=True)
        log("clients closed")
        with contextlib.suppress(OSError):
            _send(writer, op="quit")
            await writer.drain()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await asyncio.to_thread(pool.cleanup_processes)
        log("pool closed")
        try:
            server_proc.wait(30)
        except subprocess.TimeoutExpired:
            server_proc.kill()
            server_proc.wait()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0, help="each measured window")
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the servers' process
    args = p.parse_args()
    import logging

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.connections))
        return
    result = asyncio.run(run(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
