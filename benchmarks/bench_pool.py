"""Per-packet costs of the decode pool (parent and worker CPU), for 50 simultaneous speakers.

Run: ``.venv/bin/python benchmarks/bench_pool.py [--seconds 10] [--speakers 50]``

Prints:
1. the IPC encoding choice: one pickle of plain tuples vs a hand-rolled struct encoding,
   per packet, both directions;
2. the libopus floor: in-process ``OpusDecoder.decode`` per frame;
3. the pool at full speed: parent CPU per packet (submit + writer + reader threads +
   building DecodedFrames), worker CPU per packet and its overhead over the floor,
   throughput; then at real-time pace: latency from submit() to on_frames.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import statistics
import struct
import sys
import threading
import time

import numpy as np
import psutil

from discord.ext.listening.opus import FRAME_BYTES, OpusDecoder, OpusEncoder
from discord.ext.listening.pool import AudioProcessPool


def speech(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(48000 * seconds)
    t = np.arange(n) / 48000
    f0 = 120 + 20 * seed % 80 + 30 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / 48000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t + seed)) * 5000 + rng.normal(0, 200, n)
    return np.repeat(np.clip(x, -32000, 32000).astype("<i2"), 2).tobytes()


def encode(seconds: float, seed: int) -> list[bytes]:
    enc = OpusEncoder(expected_loss=10)
    pcm = speech(seconds, seed)
    return [enc.encode(pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


_ITEM = struct.Struct("<IHIIqi")


def struct_encode(items: list[tuple]) -> bytes:
    parts: list[bytes] = []
    ap, pack = parts.append, _ITEM.pack
    for ssrc, seq, ts, payload, lost, extra in items:
        if payload is None:
            ap(pack(ssrc, seq, ts, lost, extra, -1))
        else:
            ap(pack(ssrc, seq, ts, lost, extra, len(payload)))
            ap(payload)
    return b"".join(parts)


def struct_decode(data: bytes) -> list[tuple]:
    out, i, n, unpack, size = [], 0, len(data), _ITEM.unpack_from, _ITEM.size
    while i < n:
        ssrc, seq, ts, lost, extra, length = unpack(data, i)
        i += size
        payload = None if length < 0 else data[i : i + length]
        i += max(length, 0)
        out.append((ssrc, seq, ts, payload, lost, extra))
    return out


def per_call_us(fn, arg, count: int, per: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn(arg)
    return (time.perf_counter() - start) / count / per * 1e6


def bench_encoding(batch: list[tuple], frames: list[tuple]) -> None:
    n = len(batch)
    reps = 2000
    pk = pickle.dumps(batch, 5)
    st = struct_encode(batch)
    print(f"IPC encoding of a {n}-packet batch, us per packet (encode / decode):")
    print(
        f"  pickle of plain tuples   {per_call_us(lambda b: pickle.dumps(b, 5), batch, reps, n):5.2f} / "
        f"{per_call_us(pickle.loads, pk, reps, n):5.2f}   ({len(pk) / n:.0f} bytes/packet)"
    )
    print(
        f"  hand-rolled struct       {per_call_us(struct_encode, batch, reps, n):5.2f} / "
        f"{per_call_us(struct_decode, st, reps, n):5.2f}   ({len(st) / n:.0f} bytes/packet)"
    )
    rp = pickle.dumps(frames, 5)
    print(
        f"  reply (3840-byte PCM)    {per_call_us(lambda b: pickle.dumps(b, 5), frames, reps // 4, n):5.2f} / "
        f"{per_call_us(pickle.loads, rp, reps // 4, n):5.2f}   ({len(rp) / n:.0f} bytes/frame)"
    )


def decode_floor(streams: list[list[bytes]], ticks: int) -> float:
    # Round-robin over the speakers, like the real traffic: 50 decoder states do not all fit
    # in cache, and decoding one speaker at a time would flatter the floor.
    decoders = [OpusDecoder() for _ in streams]
    start = time.process_time()
    for tick in range(ticks):
        for dec, pkts in zip(decoders, streams):
            dec.decode(pkts[tick])
    return (time.process_time() - start) / (ticks * len(streams)) * 1e6


class _StubDecoder:
    """Stands in for OpusDecoder: returns fresh PCM without decoding, to time our code alone."""

    _pcm = bytearray(FRAME_BYTES)

    def decode(self, packet: bytes) -> bytes:
        return bytes(self._pcm)


def worker_path_cost(streams: list[list[bytes]], ticks: int, rounds: int = 7) -> float:
    """The worker's per-packet work besides libopus, in-process and with a stub decoder so
    that background load and decoder cache misses do not drown a few microseconds: unpickle
    the batch, DecoderSet.decode_items, pickle the reply (the pipe's syscalls are not in it)."""
    from discord.ext.listening import decoding

    speakers = len(streams)
    batches = [
        pickle.dumps([(1, 1, 5, [(1000 + s, t, 960 * t, streams[s][t], 0, t, False) for s in range(speakers)])], 5)
        for t in range(ticks)
    ]
    real, decoding.OpusDecoder = decoding.OpusDecoder, _StubDecoder  # type: ignore[misc]
    try:
        best = math.inf
        for _ in range(rounds):
            dec = decoding.DecoderSet()
            start = time.thread_time()
            for data in batches:
                ((_, sid, _limit, items),) = pickle.loads(data)
                frames: list[tuple] = []
                refused: list[tuple] = []
                dec.decode_items(items, frames, refused)
                pickle.dumps((2, [(sid, len(items), frames, dec.counts.take(), refused)], 0), 5)
            best = min(best, time.thread_time() - start)
    finally:
        decoding.OpusDecoder = real  # type: ignore[misc]
    return best / (ticks * speakers) * 1e6


def thread_cpu() -> dict[str, float]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    return {names.get(t.id, "other"): t.user_time + t.system_time for t in psutil.Process().threads()}


class Counter:
    def __init__(self) -> None:
        self.frames = 0
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.sent_at: dict[int, float] = {}

    def __call__(self, frames: list) -> None:
        # What the receive pipeline's on_frames does: note and return.
        now = time.perf_counter()
        with self.lock:
            self.frames += len(frames)
            sent = self.sent_at.pop(frames[-1].extra, None)
            if sent is not None:
                self.latencies.append(now - sent)


def worker_cpu(pool: AudioProcessPool) -> float:
    total = 0.0
    for pid in pool.worker_pids():
        if pid is not None:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def run_pool(processes: int, guilds: int, streams: list[list[bytes]], paced_seconds: float) -> None:
    speakers = len(streams)
    ticks = min(len(s) for s in streams)
    counter = Counter()
    with AudioProcessPool(processes, wait_timeout=30.0, max_backlog=100_000) as pool:
        handles = [pool.open_stream(g, counter) for g in range(guilds)]
        deadline = time.monotonic() + 30
        while any(s.inc is None or not s.inc.ready for s in pool._slots[: min(processes, guilds)]):
            if time.monotonic() > deadline:
                sys.exit("workers did not start")
            time.sleep(0.01)
        per_guild = [list(range(g, speakers, guilds)) for g in range(guilds)]
        batches = []
        for tick in range(ticks):
            for g, handle in enumerate(handles):
                batches.append(
                    (
                        handle,
                        [
                            (1000 + s, tick & 0xFFFF, (960 * tick) & 0xFFFFFFFF, streams[s][tick], 0, tick, False)
                            for s in per_guild[g]
                        ],
                    )
                )
        total = sum(len(b) for _, b in batches)

        # Full speed: how much CPU each side spends per packet.
        threads0 = thread_cpu()
        w0, p0, t0 = worker_cpu(pool), time.process_time(), time.perf_counter()
        submit_cpu = 0.0
        for handle, batch in batches:
            c = time.thread_time()
            handle.submit(batch)
            submit_cpu += time.thread_time() - c
        for handle in handles:
            handle.flush(60)
        wall = time.perf_counter() - t0
        parent = time.process_time() - p0
        worker = worker_cpu(pool) - w0
        threads1 = thread_cpu()
        per_thread = {
            role: sum(v - threads0.get(k, 0.0) for k, v in threads1.items() if k.endswith(role)) / total * 1e6
            for role in ("reader", "writer", "monitor")
        }
        assert counter.frames == total, (counter.frames, total)
        print(f"\npool: {processes} worker(s), {guilds} guild(s), {speakers} speakers, {ticks} ticks = {total} packets")
        print(f"  throughput          {total / wall:8.0f} packets/s  ({total / wall / (50 * speakers):.1f}x real time)")
        print(
            f"  parent CPU          {parent / total * 1e6:8.2f} us/packet  (submit() {submit_cpu / total * 1e6:.2f}, "
            + ", ".join(f"{k} threads {v:.2f}" for k, v in per_thread.items())
            + "; 10 ms tick resolution)"
        )
        print(f"  worker CPU          {worker / total * 1e6:8.2f} us/packet  (all workers)")
        floor = decode_floor(streams, ticks)
        print(
            f"  libopus floor       {floor:8.2f} us/packet  (in this process; difference {worker / total * 1e6 - floor:+.1f} us, "
            "mostly cache and scheduler noise: the stub line above is the code's own cost)"
        )

        # Real-time pace: one batch per guild every 20 ms; latency submit -> on_frames.
        if paced_seconds > 0:
            n_ticks = min(ticks, int(paced_seconds * 50))
            counter.latencies.clear()
            w0, p0 = worker_cpu(pool), time.process_time()
            start = time.perf_counter()
            for tick in range(n_ticks):
                target = start + tick * 0.02
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                for g, handle in enumerate(handles):
                    extra = 1_000_000 + tick * guilds + g
                    batch = [(1000 + s, tick, 960 * tick, streams[s][tick], 0, extra, False) for s in per_guild[g]]
                    with counter.lock:
                        counter.sent_at[extra] = time.perf_counter()
                    handle.submit(batch)
            for handle in handles:
                handle.flush(60)
            packets = n_ticks * speakers
            parent = (time.process_time() - p0) / packets * 1e6
            worker = (worker_cpu(pool) - w0) / packets * 1e6
            print(f"  paced parent CPU    {parent:8.2f} us/packet  (includes this loop building the batches)")
            print(f"  paced worker CPU    {worker:8.2f} us/packet")
            lat = sorted(counter.latencies)
            if lat:
                print(
                    f"  paced latency       p50 {statistics.median(lat) * 1e3:.1f} ms, "
                    f"p99 {lat[int(len(lat) * 0.99) - 1] * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms "
                    f"(submit -> on_frames, batch of {speakers // guilds})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per speaker")
    parser.add_argument("--speakers", type=int, default=50)
    parser.add_argument("--paced", type=float, default=3.0, help="seconds of real-time-paced submission")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    voices = [encode(args.seconds, seed) for seed in range(10)]  # 10 distinct voices, reused
    streams = [voices[s % len(voices)] for s in range(args.speakers)]
    # Distinct payload objects: pickle would otherwise store the shared ones once.
    batch = [(1000 + s, 7, 960 * 7, bytes(bytearray(streams[s][7])), 0, 7) for s in range(args.speakers)]
    dec = OpusDecoder()
    frames = [(1000 + s, 7, 960 * 7, dec.decode(streams[s][7]), 0, 7) for s in range(args.speakers)]
    bench_encoding(batch, frames)
    cost = worker_path_cost(streams, min(100, len(streams[0])))
    print(f"\nworker code per packet besides libopus (stub decoder, in-process): {cost:.2f} us")
    run_pool(1, 1, streams, args.paced)
    run_pool(2, 2, streams, args.paced)


if __name__ == "__main__":
    main()
