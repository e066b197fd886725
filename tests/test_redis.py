"""Frames to a Redis Stream: a real Redis server (started by the tests) and a real session.

Members of the local voice server speak; the bot listens with ``decode=False`` into a
``RedisStreamSink``; the stream must then hold every frame of every member, in order, with its
metadata and its Opus exactly as the member sent it, between a start and a stop record.
"""

from __future__ import annotations

import asyncio
import struct
import wave

import pytest
import redis

from discord.ext import listening
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from helpers import listen_until_done, settle

pytestmark = pytest.mark.timeout(60)


async def test_every_frame_reaches_the_stream_in_order_with_its_metadata(pool, redis_url: str) -> None:
    async with VoiceServerEmulator(seed=101, dave=False) as server:
        alice = await server.add_member(10100, "alice")
        bob = await server.add_member(10101, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = listening.RedisStreamSink(redis_url, guild_id=vc.guild.id, maxlen=100_000)
        done = await listen_until_done(vc, sink, pool, decode=False)
        spurts = await asyncio.gather(alice.speak(speechlike(1.0, seed=1)), bob.speak(speechlike(0.8, seed=2)))
        await server.drain()
        await settle(server, vc, (alice, [spurts[0]]), (bob, [spurts[1]]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    client = redis.Redis.from_url(redis_url)
    entries = client.xrange(sink.stream)
    assert sink.stream.startswith(f"listening:{vc.guild.id}:")  # one stream per recording
    kinds = [fields[b"type"] for _, fields in entries]
    assert kinds[0] == b"start" and kinds[-1] == b"stop" and set(kinds[1:-1]) == {b"frame", b"member"}
    assert entries[0][1][b"guild"] == str(vc.guild.id).encode()
    # each member is named once, before their first frame
    named = {
        fields[b"user"]: (i, fields[b"name"]) for i, (_, fields) in enumerate(entries) if fields[b"type"] == b"member"
    }
    assert {u: n for u, (_, n) in named.items()} == {b"10100": b"alice", b"10101": b"bob"}
    for user, (at, _) in named.items():
        first = next(
            i
            for i, (_, f) in enumerate(entries)
            if f[b"type"] == b"frame" and struct.unpack("<q", f[b"meta"][:8])[0] == int(user)
        )
        assert at < first
    entries = [e for e in entries if e[1][b"type"] != b"member"]
    # the documented layout of "meta", read here with struct, not with the library's reader
    layout = struct.Struct("<qIHIqdBq")
    frames = [(layout.unpack(fields[b"meta"]), fields[b"audio"]) for _, fields in entries[1:-1]]
    assert sink.published == len(entries) + 2 and sink.dropped == 0
    opus = list(listening.FrameKind).index(listening.FrameKind.opus)
    for member, spurt in ((alice, spurts[0]), (bob, spurts[1])):
        mine = [(m, a) for m, a in frames if m[0] == member.user_id]
        assert [m[2] for m, _ in mine] == [f.sequence for f in spurt.frames]
        assert [a for _, a in mine] == [f.opus for f in spurt.frames]  # Opus as sent
        assert {m[6] for m, _ in mine} == {opus} and {m[1] for m, _ in mine} == {member.ssrc}
        assert [m[3] for m, _ in mine] == [f.timestamp for f in spurt.frames]
        positions = [m[4] for m, _ in mine]
        assert positions == sorted(positions) and all(m[5] > 0 for m, _ in mine)


def test_an_unreachable_redis_costs_counted_drops_never_a_blocked_sink() -> None:
    # nothing listens on this port: every write fails, the buffer fills, the rest is counted
    sink = listening.RedisStreamSink("redis://127.0.0.1:9/0", guild_id=1, buffer=10)
    frame = listening.AudioFrame(None, 1, 0, 0, b"\xf8\xff\xfe", listening.FrameKind.opus, 0, 0.0)
    for _ in range(50):
        sink.on_audio(frame)  # returns at once, whatever Redis does
    assert sink.dropped == 50 + 1 - 10  # the start record took a place too
    sink.on_stop(960)  # a worker needs the stop record: it gets in past the bound
    assert sink.dropped == 41
    sink.cleanup()
    assert sink.published == 0 and sink.reconnects >= 1


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(TypeError, match=r"redis must be a URL or a redis\.Redis client"):
        listening.RedisStreamSink(42, guild_id=1)
    with pytest.raises(ValueError, match="maxlen must be within"):
        listening.RedisStreamSink("redis://127.0.0.1:9/0", guild_id=1, maxlen=0)
    with pytest.raises(ValueError, match="keep must be"):
        listening.RedisStreamSink("redis://127.0.0.1:9/0", guild_id=1, keep=-1)
    with pytest.raises(TypeError, match="make_sink must be callable"):
        listening.RedisWorker("redis://127.0.0.1:9/0", "files")
    with pytest.raises(ValueError, match="lease must be"):
        listening.RedisWorker("redis://127.0.0.1:9/0", listening.AudioSink, lease=0)
    with pytest.raises(TypeError, match="sink must be an AudioSink"):
        listening.StreamWorker("redis://127.0.0.1:9/0", "s", object())  # type: ignore[arg-type]


def test_a_stream_has_one_owner_a_lease_and_a_stalled_owner_lets_go(redis_url: str, tmp_path) -> None:
    """Two workers never hold one stream at once; one that stalls past its lease loses the
    stream to the other, and stops writing it."""
    import time

    client = redis.Redis.from_url(redis_url)
    a = listening.StreamLease(client, "s", "g", "a", 0.3)
    b = listening.StreamLease(client, "s", "g", "b", 0.3)
    assert a.acquire() and not b.acquire() and not b.renew() and a.renew()
    b.release()  # not b's to give up
    assert client.get(a.key) == b"a"
    time.sleep(0.4)  # a stalled: its lease ran out
    assert b.acquire() and not a.renew()
    a.release()
    assert client.get(b.key) == b"b"
    b.release()
    assert client.get(b.key) is None

    stream = _publish_clip(redis_url, 80, 8, stop=False)
    sinks: list[listening.AudioSink] = []

    def files(key: str) -> listening.AudioSink:
        sinks.append(listening.AudioFileSink(listening.WaveAudioFile, tmp_path / str(len(sinks))))
        return sinks[-1]

    first = listening.RedisWorker(redis_url, files, consumer="first", lease=0.3, scan_every=0.01)
    first.poll(block=0.01)
    assert first.streams == [stream]
    second = listening.RedisWorker(redis_url, files, consumer="second", lease=0.3, scan_every=0.01)
    second.poll(block=0.01)
    assert second.streams == []  # held by the first
    time.sleep(0.4)  # the first stalls past its lease, and the bot goes on
    client.xadd(stream, {"type": "stop", "guild": "80", "pos": str(960 * 50)})
    second.poll(block=0.01)  # takes it over: replays it, reads the rest, finishes
    assert [w.stream for w in second.finished] == [stream]
    first.poll(block=0.01)
    assert first.streams == [] and first.finished == []  # it noticed and let go
    with wave.open(str(tmp_path / "1" / "8-unknown.wav")) as w:  # the taker's files: whole
        assert w.getnframes() == 960 * 50


@pytest.mark.parametrize("decode", [False, True], ids=["opus", "pcm"])
async def test_a_worker_writes_the_files_the_bot_would_have_written(
    pool, redis_url: str, tmp_path, decode: bool
) -> None:
    """Opus (the bot decodes nothing; the worker's files decode it) or PCM (``listen(decode=True)``:
    the frames go decoded): either way the worker's files are the bot's, byte for byte."""
    in_bot = tmp_path / "in-bot"
    async with VoiceServerEmulator(seed=102, dave=False, loss=0.03) as server:
        alice = await server.add_member(10200, "alice")
        bob = await server.add_member(10201, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(listening.WaveAudioFile, in_bot, mixed=True, filename="{user_id}")
        published = listening.RedisStreamSink(redis_url, guild_id=vc.guild.id)
        done = await listen_until_done(vc, listening.FanOutSink(files, published), pool, decode=decode)
        await asyncio.gather(alice.speak(speechlike(1.0, seed=3)), bob.speak(speechlike(0.7, seed=4)))
        await server.drain()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    worker = listening.StreamRecorder(
        redis_url, published.stream, tmp_path / "worker", mixed=True, filename="{user_id}"
    )
    paths = await asyncio.to_thread(worker.run, 10)
    assert (
        sorted(p.name for p in paths)
        == sorted(p.name for p in in_bot.iterdir())
        == [
            "10200.wav",
            "10201.wav",
            "mixed.wav",
        ]
    )
    for p in paths:  # the same timeline, the same lengths: byte for byte
        assert p.read_bytes() == (in_bot / p.name).read_bytes(), p.name
    client = redis.Redis.from_url(redis_url)
    pending = client.xpending(published.stream, "listening-recorders")
    assert pending["pending"] == 0 and worker.frames > 50  # every entry acknowledged


async def test_a_redis_restart_mid_recording_costs_a_counted_gap_and_publishing_resumes(pool, redis_server) -> None:
    async with VoiceServerEmulator(seed=103, dave=False) as server:
        alice = await server.add_member(10300, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = listening.RedisStreamSink(redis_server.url, guild_id=vc.guild.id, buffer=20)
        done = await listen_until_done(vc, sink, pool, decode=False)
        talk = asyncio.create_task(alice.speak(speechlike(3.0, seed=5)))
        await asyncio.sleep(0.8)
        await asyncio.to_thread(redis_server.stop)  # Redis goes away mid-speech...
        await asyncio.sleep(1.0)  # ~50 frames: 20 wait in the buffer, the rest are dropped
        assert vc.is_listening() and sink.dropped > 0
        await asyncio.to_thread(redis_server.start)  # ...and comes back, empty (no persistence)
        spurt = await talk
        await server.drain()
        await settle(server, vc, (alice, [spurt]))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    entries = redis.Redis.from_url(redis_server.url).xrange(sink.stream)
    layout = struct.Struct("<qIHIqdBq")
    seqs = [layout.unpack(fields[b"meta"])[2] for _, fields in entries if fields[b"type"] == b"frame"]
    sent = [f.sequence for f in spurt.frames]
    # after the restart: the 20 frames the buffer held through the outage, a gap of exactly the
    # frames it dropped, then every later frame, in order
    first = sent.index(seqs[0])
    resumed = sent.index(seqs[20])
    assert seqs == sent[first : first + 20] + sent[resumed:], (len(seqs), len(sent))
    assert resumed - (first + 20) == sink.dropped > 0 and len(sent) - resumed >= 20
    assert entries[-1][1][b"type"] == b"stop" and sink.reconnects >= 1
    # every entry was either accepted by a Redis or dropped and counted (start and stop included)
    assert sink.published + sink.dropped == len(sent) + 3  # start, member, stop


def _publish_clip(redis_url: str, guild_id: int, user_id: int, frames: int = 50, *, stop: bool = True) -> str:
    """A recording published as a bot would: one member's Opus frames, then the stop record
    (or, without ``stop``, not yet: the sink is still publishing)."""
    import discord
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.opus import OpusEncoder

    enc = OpusEncoder(64000)
    pcm = load_clip("alice")[: 3840 * frames]
    sink = listening.RedisStreamSink(redis_url, guild_id=guild_id)
    who = discord.Object(id=user_id)
    for k in range(frames):
        opus = enc.encode(pcm[k * 3840 : (k + 1) * 3840])
        sink.on_audio(listening.AudioFrame(who, 9, k, 960 * k, opus, listening.FrameKind.opus, 960 * k, 0.0))
    if stop:
        sink.on_stop(960 * frames)
    sink.cleanup()
    return sink.stream


def test_the_worker_command_records_every_stream_and_says_where(redis_url: str, tmp_path, capsys) -> None:
    from discord.ext.listening.__main__ import main

    streams = [_publish_clip(redis_url, 77, 5), _publish_clip(redis_url, 78, 6, frames=30)]
    out_dir = tmp_path / "rec"
    command = ["worker", "record", "--redis", redis_url, "--output", str(out_dir), "--idle-exit", "1.5"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "50 frames from " + streams[0] in printed and "30 frames from " + streams[1] in printed
    dirs = sorted(out_dir.iterdir())
    assert [d.name for d in dirs] == [s.replace(":", "-") for s in streams]  # a directory per recording
    for d, user, frames in ((dirs[0], 5, 50), (dirs[1], 6, 30)):
        assert sorted(p.name for p in d.iterdir()) == [f"{user}-unknown.wav", "mixed.wav"]  # ids, not names
        assert str(d / "mixed.wav") in printed
        with wave.open(str(d / f"{user}-unknown.wav")) as w:
            assert w.getnframes() == 960 * frames
    assert main(command) == 0 and "frames from" not in capsys.readouterr().out  # nothing recorded twice
    unreachable = ["worker", "record", "--redis", "redis://127.0.0.1:9/0", "--output", str(out_dir)]
    assert main(unreachable) == 1
    assert "the worker failed" in capsys.readouterr().err


def _worker_process(redis_url: str, output, *extra: str):
    """``worker record`` in a process of its own (the way operators run it)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "discord.ext.listening", "worker", "record", "--redis", redis_url]
    command += ["--streams", "t:*", "--output", str(output), "--lease", "1", "--idle-exit", "3", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _record_in_bot(pool, redis_url: str, in_bot, guild_id: int, seed: int, during=None) -> str:
    """Members speak; the bot records them in-process and publishes them at once. ``during``
    (an async callable taking the stream's key) runs while they speak."""
    async with VoiceServerEmulator(seed=seed, dave=False, loss=0.02, guild_id=guild_id) as server:
        alice = await server.add_member(guild_id * 10, "alice")
        bob = await server.add_member(guild_id * 10 + 1, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(listening.WaveAudioFile, in_bot, mixed=True)
        published = listening.RedisStreamSink(redis_url, guild_id=guild_id, stream="t:{guild_id}:{started}")
        done = await listen_until_done(vc, listening.FanOutSink(files, published), pool, decode=False)
        talk = asyncio.gather(alice.speak(speechlike(1.5, seed=seed)), bob.speak(speechlike(1.2, seed=seed + 1)))
        if during is not None:
            await during(published.stream)
        await talk
        await server.drain()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    return published.stream


def _same_files(worker_dir, in_bot) -> None:
    names = sorted(p.name for p in in_bot.iterdir())
    assert sorted(p.name for p in worker_dir.iterdir()) == names and "mixed.wav" in names and len(names) == 3
    for name in names:  # the same timeline, the same lengths: byte for byte
        assert (worker_dir / name).read_bytes() == (in_bot / name).read_bytes(), name


async def test_two_worker_processes_share_two_recordings_and_write_the_bots_files(pool, redis_url: str, tmp_path):
    """Two guilds record at once; two worker processes, one stream each (``--max-streams 1``),
    write exactly the files the bots wrote in-process."""
    workers = [_worker_process(redis_url, tmp_path / f"w{i}", "--max-streams", "1") for i in range(2)]
    try:
        streams = await asyncio.gather(
            _record_in_bot(pool, redis_url, tmp_path / "bot1", 1051, seed=11),
            _record_in_bot(pool, redis_url, tmp_path / "bot2", 1052, seed=13),
        )
        outs = [await asyncio.to_thread(w.communicate, timeout=30) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outs
    made = {d.name: d for i in range(2) for d in (tmp_path / f"w{i}").iterdir()}
    assert [len(list((tmp_path / f"w{i}").iterdir())) for i in range(2)] == [1, 1]  # one stream each
    for stream, in_bot in zip(streams, (tmp_path / "bot1", tmp_path / "bot2"), strict=True):
        _same_files(made[stream.replace(":", "-")], in_bot)
        assert redis.Redis.from_url(redis_url).xpending(stream, "listening-recorders")["pending"] == 0


async def test_a_killed_worker_process_is_replaced_and_the_files_are_whole_with_nothing_twice(
    pool, redis_url: str, tmp_path
) -> None:
    """The worker holding a stream is SIGKILLed mid-recording; the other one waits out its lease,
    takes the stream over (replaying it up to what the group handed out, claiming the dead one's
    pending entries) and finishes: its files are the bot's, byte for byte."""
    import os
    import signal

    client = redis.Redis.from_url(redis_url)
    workers = [_worker_process(redis_url, tmp_path / f"w{i}") for i in range(2)]
    killed: list[int] = []

    async def kill_the_owner(stream: str) -> None:
        def handed_out() -> int:  # entries the group gave its consumers (Redis 6.2 has no "entries-read")
            if not client.exists(stream):
                return 0
            groups = client.xinfo_groups(stream)
            return len(client.xrange(stream, "-", groups[0]["last-delivered-id"])) if groups else 0

        for _ in range(200):
            if handed_out() > 60:
                break
            await asyncio.sleep(0.05)
        owner = client.get(f"{stream}:lease:listening-recorders").decode()
        pid = int(owner.rsplit("-", 1)[1])
        index = [w.pid for w in workers].index(pid)
        os.kill(pid, signal.SIGKILL)  # mid-recording: no clean-up of any kind
        killed.append(index)

    try:
        stream = await _record_in_bot(pool, redis_url, tmp_path / "bot", 1053, seed=15, during=kill_the_owner)
        survivor = workers[1 - killed[0]]
        out, err = await asyncio.to_thread(survivor.communicate, timeout=30)
    finally:
        for w in workers:
            w.kill()
    assert survivor.returncode == 0, err
    assert f"frames from {stream}" in out
    _same_files(tmp_path / f"w{1 - killed[0]}" / stream.replace(":", "-"), tmp_path / "bot")  # nothing lost or twice
    assert client.xpending(stream, "listening-recorders")["pending"] == 0


async def test_worker_stream_hands_each_member_s_utterances_to_a_function(
    pool, redis_url: str, tmp_path, monkeypatch
) -> None:
    """``worker stream --utterances``: a function of the user's gets the utterances an
    ``AudioStream`` in the bot gets, the same audio (16 kHz mono float32) at the same times."""
    import json

    from discord.ext.listening.__main__ import main

    (tmp_path / "collect.py").write_text(
        "import json\n"
        "def utterance(stream, u):\n"
        "    with open('got.jsonl', 'a') as f:\n"
        "        f.write(json.dumps([stream, u.user_id, u.start, u.end, u.audio.tolist()]) + '\\n')\n"
    )
    monkeypatch.chdir(tmp_path)
    fmt = listening.PCMFormat(16000, 1, "float32")
    in_bot = listening.AudioStream(format=fmt)
    got_in_bot: list[listening.Utterance] = []

    async def collect() -> None:
        async for u in in_bot.utterances():
            got_in_bot.append(u)

    async with VoiceServerEmulator(seed=106, dave=False) as server:
        alice = await server.add_member(10600, "alice")
        bob = await server.add_member(10601, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        published = listening.RedisStreamSink(redis_url, guild_id=vc.guild.id)
        done = await listen_until_done(vc, listening.FanOutSink(in_bot, published), pool, decode=True)
        collecting = asyncio.create_task(collect())
        for member, seed in ((alice, 1), (bob, 2), (alice, 3)):  # in turn, with pauses
            await member.speak(speechlike(0.8, seed=seed))
            await asyncio.sleep(1.0)
        await server.drain()
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        await collecting
    command = ["worker", "stream", "--redis", redis_url, "--call", "collect:utterance", "--utterances"]
    command += ["--rate", "16000", "--channels", "1", "--dtype", "float32", "--idle-exit", "1.5"]
    assert await asyncio.to_thread(main, command) == 0
    got = [json.loads(line) for line in (tmp_path / "got.jsonl").read_text().splitlines()]
    assert [g[1] for g in got] == [u.user_id for u in got_in_bot] == [10600, 10601, 10600]
    for g, u in zip(got, got_in_bot, strict=True):
        assert g[0] == published.stream and (g[2], g[3]) == (u.start, u.end)
        assert g[4] == u.audio.tolist()  # the frames went as PCM: the same samples
