"""CPU per packet of the parent's receive path in a tight loop, no sockets, no other threads.

Run: ``.venv/bin/python benchmarks/bench_receiver.py [--speakers 100] [--seconds 3] [--passes 7]``

The packets are the benchmark corpus (``common.py``), laid out as Discord clients send them
(audio-level extension, AES-256-GCM ``rtpsize``), ``--speakers`` speakers at 50 packets a
second each, spread evenly over each 20 ms, built once beforehand. Each pass feeds them to
a fresh receiver in 10 ms batches (what the session's socket thread reads per round) and
releases after every batch, timing CPU (``time.process_time``) over the whole pass:

* ``receiver``: :class:`PacketReceiver` alone (``datagrams`` + ``poll`` per batch, as the socket thread calls it);
* ``session``: the same through :class:`ListeningSession` with ``decode=False`` (its
  ``_receive`` + ``_release``: packets become :class:`AudioFrame` lists on the sink queue,
  which is emptied after every batch), i.e. the socket thread's Python work minus ``recvmsg``.

Prints the median and the spread of the passes per level, and one ``RESULT {json}`` line.
``--profile`` runs one pass of each level under cProfile instead and prints the top entries.
``--pace`` sleeps 10 ms between batches as the real socket thread does (caches and the
CPU's state go cold in between; passes then take real time). ``--compare DIR`` also loads another copy of the package (a ``discord/ext/listening``
directory, e.g. from ``git archive`` of an older commit) and alternates pass by pass between
it (``base``) and this tree in the same process, for A/B comparisons on a noisy machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import discord.ext.listening as this_tree
from discord.ext.listening.testing.speech import build_rtp_packet
from discord.ext.listening.transport import AES_GCM, transport_cipher

KEY = bytes(range(32))
USER_BASE = 800000000000000000
BATCH = 0.01


def build(speakers: int, seconds: float) -> tuple[list[list[tuple[bytes, float]]], list[int]]:
    """Packets grouped in 10 ms arrival batches, and the SSRCs."""
    cipher = transport_cipher(AES_GCM, KEY)
    rounds = int(seconds / common.FRAME_SECONDS)
    ssrcs = [1000 + 7 * s for s in range(speakers)]
    arrivals: list[tuple[float, bytes]] = []
    counter = 0
    for s, ssrc in enumerate(ssrcs):
        frames = common.speaker_frames(s, rounds)
        q0, ts0 = (s * 7919) & 0xFFFF, (s * 104729) & 0xFFFFFFFF
        for r in range(rounds):
            counter += 1
            pkt = build_rtp_packet(
                cipher,
                counter,
                ssrc=ssrc,
                sequence=(q0 + r) & 0xFFFF,
                timestamp=(ts0 + 960 * r) & 0xFFFFFFFF,
                payload=frames[r],
                marker=r == 0,
                audio_level=30,
            )
            arrivals.append((1.0 + r * common.FRAME_SECONDS + s * common.FRAME_SECONDS / speakers, pkt))
    arrivals.sort(key=lambda a: a[0])
    batches: list[list[tuple[bytes, float]]] = []
    i = 0
    t = 1.0 + BATCH
    while i < len(arrivals):
        b = []
        while i < len(arrivals) and arrivals[i][0] < t:
            b.append((arrivals[i][1], arrivals[i][0]))
            i += 1
        batches.append(b)
        t += BATCH
    return batches, ssrcs


def _conn() -> SimpleNamespace:
    return SimpleNamespace(mode=AES_GCM, secret_key=list(KEY), dave_session=None, dave_protocol_version=0)


def _map(pkg: Any, ssrcs: list[int]) -> Any:
    m = pkg.ssrc.SSRCMap()
    for i, s in enumerate(ssrcs):
        m.set_audio(s, USER_BASE + i)
    return m


PACE = 0.0


def _receiver(pkg: Any, ssrcs: list[int]) -> Any:
    """A PacketReceiver of ``pkg`` holding the keys: told them (this tree), or reading them from
    a connection object (copies from before the receiver took keys by explicit calls)."""
    cls = pkg.receive.PacketReceiver
    if not hasattr(cls, "set_transport"):
        return cls(_conn(), _map(pkg, ssrcs), pkg.stats.ListenStats(), origin=0.0)
    rx = cls(_map(pkg, ssrcs), pkg.stats.ListenStats(), origin=0.0)
    rx.set_transport(AES_GCM, KEY)
    return rx


def receiver_pass(pkg: Any, batches: list[list[tuple[bytes, float]]], ssrcs: list[int]) -> tuple[float, int]:
    rx = _receiver(pkg, ssrcs)
    datagrams, poll = rx.datagrams, rx.poll
    split = [([d for d, _ in b], [a for _, a in b]) for b in batches]  # as the session hands them over
    out = 0
    t = 1.0
    t0 = time.process_time()
    for data, arrivals in split:
        datagrams(data, arrivals)
        t += BATCH
        out += len(poll(t)[0])
        if PACE:
            time.sleep(PACE)
    out += len(rx.flush(t + 1.0))
    return time.process_time() - t0, out


class _Guild:
    id = 1

    def get_member(self, user_id: int) -> None:
        return None


def session_pass(pkg: Any, batches: list[list[tuple[bytes, float]]], ssrcs: list[int]) -> tuple[float, int]:
    conn = _conn()
    vc = SimpleNamespace(loop=None, guild=_Guild(), _connection=conn)
    session = pkg.session.ListeningSession(
        vc,
        pkg.sink.AudioSink(),
        None,
        ssrc_map=_map(pkg, ssrcs),
        decode=False,
        after=None,
        after_kwargs={},
        jitter_depth=0.06,
        sink_queue_size=1 << 30,
    )
    session.receiver.origin = 0.0
    if hasattr(session.receiver, "set_transport"):  # the voice client's hook does this in a real session
        session.receiver.set_transport(AES_GCM, KEY)
    q = session._queue
    receive, release = session._receive, session._release
    out = 0
    t = 1.0
    t0 = time.process_time()
    for b in batches:
        receive([d for d, _ in b], [a for _, a in b])
        t += BATCH
        release(t)
        while q:
            item = q.popleft()
            if type(item) is list:
                out += len(item)
        if PACE:
            time.sleep(PACE)
    return time.process_time() - t0, out


LEVELS: dict[str, Callable[..., tuple[float, int]]] = {"receiver": receiver_pass, "session": session_pass}


def load_copy(directory: str, name: str = "listening_base") -> Any:
    """Import another copy of the package (its ``discord/ext/listening`` directory) as ``name``."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory]
    )
    assert spec is not None and spec.loader is not None
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    for sub in ("receive", "session", "sink", "ssrc", "stats"):
        importlib.import_module(f"{name}.{sub}")
    return pkg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speakers", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0, help="simulated seconds of traffic per pass")
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--levels", default="receiver,session")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--pace", action="store_true", help="sleep 10 ms between batches")
    p.add_argument("--compare", metavar="DIR", help="another copy of discord/ext/listening to alternate with")
    args = p.parse_args()
    global PACE
    PACE = BATCH if args.pace else 0.0
    for sub in ("receive", "session", "sink", "ssrc", "stats"):
        importlib.import_module(f"discord.ext.listening.{sub}")
    trees = {"": this_tree}
    if args.compare:
        trees = {"base ": load_copy(os.path.abspath(args.compare)), "": this_tree}
    batches, ssrcs = build(args.speakers, args.seconds)
    packets = sum(map(len, batches))
    levels = args.levels.split(",")
    if args.profile:
        import cProfile
        import pstats

        for name in levels:
            prof = cProfile.Profile()
            prof.runcall(LEVELS[name], this_tree, batches, ssrcs)
            print(f"== {name}: {packets} packets")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    for pkg in trees.values():
        LEVELS[levels[0]](pkg, batches, ssrcs)  # warm-up
    results: dict[str, Any] = {"speakers": args.speakers, "packets": packets, "loadavg": os.getloadavg()}
    runs: dict[str, list[float]] = {t + n: [] for n in levels for t in trees}
    for _ in range(args.passes):
        for name in levels:  # alternate levels and trees pass by pass
            for tag, pkg in trees.items():
                cpu, out = LEVELS[name](pkg, batches, ssrcs)
                if out != packets:
                    raise SystemExit(f"{tag}{name}: {out} of {packets} packets came out")
                runs[tag + name].append(cpu / packets * 1e6)
    for name, us in runs.items():
        results[name] = {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us), "passes": us}
        print(
            f"{name:14s} {statistics.median(us):6.2f} us/packet (min {min(us):.2f}, max {max(us):.2f}, "
            f"{len(us)} passes of {packets} packets, {args.speakers} speakers)"
        )
    if args.compare:
        for name in levels:
            ratios = [n / b for n, b in zip(runs[name], runs["base " + name])]
            results["ratio " + name] = statistics.median(ratios)
            print(f"{name}: this tree / base, median of pass pairs: {statistics.median(ratios):.3f}")
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
