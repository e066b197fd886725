"""One measured receive run, in a fresh process: local voice servers, a bot, a sender process.

``python scenario.py --library listening --guilds 1 --speakers 10 --decode 1 --workers 1``

* ``--guilds`` local voice servers (:class:`VoiceServerEmulator`, one guild each) and one bot
  voice connection to each (discord.py 2.7.1, the real ``channel.connect``), with
  ``--speakers`` simulated members per guild (real DAVE members when ``--dave 1``; their
  SSRCs reach the bot by op 12 as on Discord).
* The library listens with a sink that only counts (it notes the SSRC, sequence number and
  time of each real frame: decoded PCM, or Opus with decode off; concealment does not count).
* Every packet of the run is built beforehand (the corpus of ``common.py``, RTP as Discord
  clients lay it out, DAVE- and transport-encrypted with the servers' keys), then a separate
  sender process sends them through the servers' own UDP sockets on 127.0.0.1 at 50 packets
  a second per speaker, speakers spread evenly over each 20 ms.
* CPU of the bot process and all its children except the sender (decode workers included)
  is taken at the start and end of the measured window (after a warm-up), with a per-thread
  breakdown; a packet counts as delivered if its frame reached the sink, as late if that took
  more than ``--late-ms`` after it was sent.

Prints one line ``RESULT {json}``. ``--library voice_recv`` runs discord-ext-voice-recv
instead (in its own environment, see run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from array import array
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

HERE = os.path.dirname(os.path.abspath(__file__))
GUILD_BASE = 700000000000000000
CHANNEL_BASE = 710000000000000000
OTHER_BASE = 720000000000000000
USER_BASE = 800000000000000000
AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"


# -- sinks that only count -----------------------------------------------------------------


class Records:
    """What a counting sink notes of each real frame: SSRC, sequence number, time of arrival.

    In arrays (18 bytes a frame, their size known exactly) rather than a list of tuples, so
    that memory measured over a long window can leave the benchmark's own notes out.
    """

    def __init__(self) -> None:
        self.ssrcs = array("I")
        self.seqs = array("H")
        self.times = array("d")
        self.other = 0  # concealed or other frames, not noted

    def records(self) -> Any:
        return zip(self.ssrcs, self.seqs, self.times)

    def records_bytes(self) -> int:
        return sys.getsizeof(self.ssrcs) + sys.getsizeof(self.seqs) + sys.getsizeof(self.times)


def listening_sink(decode: bool) -> Any:
    from discord.ext import listening

    want = listening.FrameKind.decoded if decode else listening.FrameKind.opus

    class CountingSink(listening.AudioSink, Records):
        def __init__(self) -> None:
            listening.AudioSink.__init__(self)
            Records.__init__(self)

        def on_audio(self, frame: Any, _mono: Any = time.monotonic) -> None:
            if frame.kind is want:
                self.ssrcs.append(frame.ssrc)
                self.seqs.append(frame.sequence)
                self.times.append(_mono())
            else:
                self.other += 1

    return CountingSink()


def voice_recv_sink(decode: bool) -> Any:
    from discord.ext import voice_recv

    class CountingSink(voice_recv.AudioSink, Records):
        def __init__(self) -> None:
            voice_recv.AudioSink.__init__(self)
            Records.__init__(self)

        def wants_opus(self) -> bool:
            return not decode

        def write(self, user: Any, data: Any, _mono: Any = time.monotonic) -> None:
            packet = data.packet
            if packet:  # FakePacket (a loss, concealed) is falsy
                self.ssrcs.append(packet.ssrc)
                self.seqs.append(packet.sequence)
                self.times.append(_mono())
            else:
                self.other += 1

        def cleanup(self) -> None:
            pass

    return CountingSink()


# -- the run -------------------------------------------------------------------------------


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped on the bot's sockets (receive buffer full)."""
    drops = 0
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                port = int(parts[1].split(":")[1], 16)
                if port in ports:
                    drops += int(parts[-1])
    except (OSError, ValueError, IndexError):
        return -1
    return drops


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from discord.ext.listening.testing import VoiceServerEmulator
    from discord.ext.listening.testing.speech import build_rtp_packet

    lib = args.library
    jitter = args.jitter_depth
    if jitter is None:
        jitter = common.default_jitter_depth() if lib == "listening" else 0.06
    listen_options = {} if args.jitter_depth is None else {"jitter_depth": args.jitter_depth}
    decode = bool(args.decode)
    dave = bool(args.dave)
    mode = AES if args.mode == "aes" else XCHACHA
    G, K = args.guilds, args.speakers
    T = G * K
    rounds = round((args.warmup + args.seconds + args.tail) * common.PACKETS_PER_SECOND)
    common.speech_frames()  # encode the corpus before anything is timed

    pool = None
    if lib == "listening":
        from discord.ext import listening

        cls: Any = listening.VoiceClient
        if decode:
            pool = listening.AudioProcessPool(args.workers)
    else:
        from discord.ext import voice_recv
        from discord.ext.listening.opus import load_for_discord

        load_for_discord()  # discord.opus.Decoder needs a libopus: the same one PyAV ships
        cls = voice_recv.VoiceRecvClient

    result: dict[str, Any] = {
        "library": lib,
        "guilds": G,
        "speakers_per_guild": K,
        "speakers": T,
        "decode": decode,
        "workers": args.workers if (lib == "listening" and decode) else 0,
        "dave": dave,
        "mode": mode,
        "seconds": args.seconds,
    }
    t_setup = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for j in range(G):
            server = VoiceServerEmulator(
                seed=1000 + j,
                dave=dave,
                require_dave=dave,
                modes=(mode,),
                rtcp_interval=None,
                guild_id=GUILD_BASE + j,
                channel_id=CHANNEL_BASE + j,
                other_channel_id=OTHER_BASE + j,
            )
            servers.append(await stack.enter_async_context(server))
        vcs = await asyncio.gather(*(s.connect(cls=cls, timeout=60) for s in servers))
        for vc in vcs:
            assert vc.mode == mode, (vc.mode, mode)
        members = []
        for j, server in enumerate(servers):
            ms = await asyncio.gather(*(server.add_member(USER_BASE + j * 10000 + i) for i in range(K)))
            members.append(ms)
        if dave:
            for server in servers:
                await server.wait_dave_ready(timeout=120)
        # Their clients say they speak (op 5, which names the SSRC) before the sender process
        # starts their packets; until the bot has every SSRC its packets would wait for a user.
        for ms in members:
            for m in ms:
                await m.start_speaking()
        for vc, ms in zip(vcs, members):
            for _ in range(500):
                ssrcs = (
                    (vc.ssrc_map.user_for(m.ssrc) for m in ms)
                    if lib == "listening"
                    else (vc._get_id_from_ssrc(m.ssrc) for m in ms)
                )
                if all(u is not None for u in ssrcs):
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("the bot never learned the members' SSRCs")
        result["setup_s"] = time.perf_counter() - t_setup

        # The packets: built now, with the servers' keys, sent later by another process.
        rng = random.Random(7)
        ssrc_index: dict[int, int] = {}
        seq0: list[int] = []
        dest = array("H")
        due = array("d")
        packets: list[bytes] = []
        fds, addrs, ports = [], [], set()
        per_speaker: list[tuple[int, Any, Any, list[bytes], int, int]] = []
        for j, (server, ms) in enumerate(zip(servers, members)):
            _, link, addr = server._media.route()
            fds.append(server.media._transport.get_extra_info("socket").fileno())
            addrs.append(addr)
            ports.add(addr[1])
            for m in ms:
                s = len(per_speaker)
                ssrc_index[m.ssrc] = s
                q0, ts0 = rng.randrange(1 << 16), rng.randrange(1 << 32)
                seq0.append(q0)
                per_speaker.append((j, link, m, common.speaker_frames(s, rounds), q0, ts0))
        for r in range(rounds):
            for s, (j, link, m, frames, q0, ts0) in enumerate(per_speaker):
                opus = frames[r]
                payload = m.dave.encrypt_opus(opus) if dave else opus
                packets.append(
                    build_rtp_packet(
                        link.cipher,
                        link.next_counter(),
                        ssrc=m.ssrc,
                        sequence=(q0 + r) & 0xFFFF,
                        timestamp=(ts0 + 960 * r) & 0xFFFFFFFF,
                        payload=payload,
                        marker=r == 0,
                        audio_level=30,
                    )
                )
                dest.append(j)
                due.append(r * common.FRAME_SECONDS + s * common.FRAME_SECONDS / T)
            if r % 10 == 9:
                await asyncio.sleep(0)  # keep heartbeats flowing during a long build
        result["packet_bytes_mean"] = sum(map(len, packets)) / len(packets)
        job = tempfile.NamedTemporaryFile(prefix="listening-bench-", suffix=".job", delete=False)
        with job:
            pickle.dump({"fds": fds, "addrs": addrs, "dest": dest, "due": due, "packets": packets}, job, 5)
        del packets, per_speaker
        sender = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "sender.py"), job.name],
            pass_fds=fds,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            loop = asyncio.get_running_loop()
            line = await loop.run_in_executor(None, sender.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"sender did not start: {line!r}")

            # Listen.
            sinks = []
            done = [asyncio.Event() for _ in vcs]
            for vc, ev in zip(vcs, done):
                if lib == "listening":
                    sink = listening_sink(decode)

                    async def after(_s: Any, _e: Any, ev: asyncio.Event = ev) -> None:
                        ev.set()

                    vc.listen(sink, pool, decode=decode, after=after, **listen_options)
                    # A connection tracks at most 256 SSRCs (the bound against SSRC floods in
                    # SECURITY.md); one guild of more speakers than that is a capacity search's
                    # business only, so the bound is lifted here rather than met as "loss".
                    vc._last_session.receiver.max_streams = max(256, 2 * K)
                else:
                    sink = voice_recv_sink(decode)
                    vc.listen(sink, after=lambda _e, ev=ev: loop.call_soon_threadsafe(ev.set))
                sinks.append(sink)
            gc.collect()
            me = psutil.Process()

            def tree() -> list[int]:
                return [os.getpid()] + [p.pid for p in me.children(recursive=True) if p.pid != sender.pid]

            await asyncio.sleep(0.5)  # threads started
            if pool is not None:
                # Every worker runs before the baseline, including those the speakers will only
                # fill later: memory per speaker is then not a process start, and a decode
                # worker that is still starting (forkserver, imports: seconds on a loaded
                # machine) would make the first measured packets late.
                for w in range(pool.max_processes):
                    pool.open_stream(0, lambda frames: None, worker=w)
                for _ in range(600):
                    slots = [sl for sl in pool._slots if sl.streams]
                    if all(sl.inc is not None and sl.inc.ready for sl in slots):
                        break
                    await asyncio.sleep(0.05)
            common.trim_heap()
            mem0, heap0 = common.uss(tree()), common.heap(tree())
            heap_by_pid = {pid: [common.heap([pid])] for pid in tree()}
            drops0 = udp_drops(ports)

            t0 = time.monotonic() + 0.2
            sender.stdin.write(f"{t0!r}\n")
            sender.stdin.flush()
            w0, w1 = t0 + args.warmup, t0 + args.warmup + args.seconds
            await asyncio.sleep(max(0.0, w0 - time.monotonic()))
            common.trim_heap()
            # Memory as the window opens (the sinks' own notes are part of it).
            mem_w0, rss_w0, heap_w0 = common.uss(tree()), common.rss(tree()), common.heap(tree())
            notes_w0 = sum(s.records_bytes() for s in sinks)
            for pid in tree():
                heap_by_pid.setdefault(pid, [0]).append(common.heap([pid]))
            a0 = time.monotonic()
            cpu0 = common.process_tree_cpu(tree())
            threads0 = common.thread_cpu()
            workers0 = {pid: common.process_tree_cpu([pid]) for pid in tree()[1:]}
            await asyncio.sleep(max(0.0, w1 - time.monotonic()))
            a1 = time.monotonic()
            cpu1 = common.process_tree_cpu(tree())
            threads1 = common.thread_cpu()
            workers1 = {pid: common.process_tree_cpu([pid]) for pid in tree()[1:]}
            common.trim_heap()
            mem1, rss1, heap1 = common.uss(tree()), common.rss(tree()), common.heap(tree())
            notes1 = sum(s.records_bytes() for s in sinks)
            for pid in tree():
                heap_by_pid.setdefault(pid, [0, 0]).append(common.heap([pid]))
            if pool is not None and os.environ.get("BENCH_DEBUG"):
                for sl in pool._slots:
                    inc = sl.inc
                    print(
                        "slot",
                        sl.index,
                        "ready",
                        inc and inc.ready,
                        "sent",
                        inc and inc.sent,
                        "done",
                        inc and inc.done,
                        "outstanding",
                        sl.outstanding,
                        "pending",
                        len(sl.pending),
                        "restarts",
                        sl.restarts,
                        file=sys.stderr,
                    )

            out = await loop.run_in_executor(None, sender.communicate)
            summary = json.loads(out[0].strip().splitlines()[-1])
            await asyncio.sleep(0.5 + (jitter or 0.06))  # the last frames reach the sinks
            drops1 = udp_drops(ports)
            for vc in vcs:
                vc.stop_listening()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in done)), 15)
            if lib == "listening":
                stats: dict[str, int] = {}
                for vc in vcs:
                    for reason, n in vc.listen_stats.total.dropped.items():
                        stats[reason.value] = stats.get(reason.value, 0) + n
                result["drop_reasons"] = stats
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        with open(job.name + ".sent", "rb") as f:
            sent_at = array("d")
            sent_at.frombytes(f.read())
        os.unlink(job.name)
        os.unlink(job.name + ".sent")

    if pool is not None:
        await asyncio.to_thread(pool.cleanup_processes)

    # -- evaluate ----------------------------------------------------------------------------
    in_window = sum(1 for t in sent_at if a0 <= t < a1)
    first, last = int(args.warmup * 50) * T, int((args.warmup + args.seconds) * 50) * T
    expected = last - first
    latencies: list[float] = []
    delivered = 0
    seen = bytearray(len(sent_at))
    for sink in sinks:
        for ssrc, seq, t in sink.records():
            s = ssrc_index.get(ssrc)
            if s is None:
                continue
            idx = ((seq - seq0[s]) & 0xFFFF) * T + s
            if first <= idx < last and not seen[idx] and sent_at[idx] > 0:
                seen[idx] = 1
                delivered += 1
                latencies.append(t - sent_at[idx])
    late = sum(1 for x in latencies if x > args.late_ms / 1000)
    cpu = cpu1 - cpu0
    result.update(
        # The event loop of a badly overloaded bot can wake so late that the window misses
        # the sending: then the per-packet CPU is meaningless (and says so).
        window_valid=in_window >= 0.8 * expected,
        window_s=a1 - a0,
        packets_in_window=in_window,
        cpu_s=cpu,
        cpu_us_per_packet=1e6 * cpu / max(1, in_window),
        cpu_cores=cpu / (a1 - a0),
        threads_us_per_packet={k: 1e6 * (threads1.get(k, 0.0) - v) / max(1, in_window) for k, v in threads0.items()},
        children_us_per_packet=sorted(
            (1e6 * (workers1.get(pid, 0.0) - v) / max(1, in_window) for pid, v in workers0.items()), reverse=True
        ),
        expected=expected,
        delivered=delivered,
        lost=expected - delivered,
        late=late,
        bad_fraction=(expected - delivered + late) / max(1, expected),
        latency_p50_ms=1000 * common.percentile(latencies, 50),
        latency_p99_ms=1000 * common.percentile(latencies, 99),
        latency_max_ms=1000 * max(latencies) if latencies else float("nan"),
        udp_drops=drops1 - drops0 if drops0 >= 0 else -1,
        uss_before_mb=mem0 / 2**20,
        uss_after_mb=mem1 / 2**20,
        uss_window_start_mb=mem_w0 / 2**20,
        # common.heap(): the tree's own memory, counted once (what the memory targets read).
        heap_before_mb=heap0 / 2**20,
        heap_window_start_mb=heap_w0 / 2**20,
        heap_after_mb=heap1 / 2**20,
        # The same per process (this one first): before listening, as the window opens, at its end.
        heap_by_process_mb=[[round(x / 2**20, 2) for x in v] for v in heap_by_pid.values()],
        rss_window_start_mb=rss_w0 / 2**20,
        rss_after_mb=rss1 / 2**20,
        # The counting sinks' own notes (the benchmark's, not the library's), in the figures above.
        sink_notes_window_start_mb=notes_w0 / 2**20,
        sink_notes_after_mb=notes1 / 2**20,
        jitter_depth_s=jitter,
        sender=summary,
        concealed_or_other_frames=sum(s.other for s in sinks),
        loadavg=os.getloadavg(),
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", choices=("listening", "voice_recv"), default="listening")
    p.add_argument("--guilds", type=int, default=1)
    p.add_argument("--speakers", type=int, default=10, help="speakers per guild")
    p.add_argument("--decode", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--dave", type=int, default=0)
    p.add_argument("--mode", choices=("aes", "xchacha"), default="aes")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--tail", type=float, default=0.3, help="sending goes on this long after the window")
    p.add_argument("--late-ms", type=float, default=200.0)
    p.add_argument("--jitter-depth", type=float, default=None, help="seconds (default: the library's default)")
    args = p.parse_args()
    import logging

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    result = asyncio.run(run(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
