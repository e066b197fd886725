"""Frames to a Redis Stream: a real Redis server (started by the tests) and a real session.

Members of the local voice server speak; the bot listens with ``decode=False`` into a
``RedisStreamSink``; the stream must then hold every frame of every member, in order, with its
metadata and its Opus exactly as the member sent it, between a start and a stop record.
"""

from __future__ import annotations

import asyncio
import struct

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
    entries = client.xrange(f"listening:{vc.guild.id}")
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
    layout = struct.Struct("<qIHIqdB")
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
        redis_url, f"listening:{vc.guild.id}", tmp_path / "worker", mixed=True, filename="{user_id}"
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
    pending = client.xpending(f"listening:{vc.guild.id}", "listening-recorders")
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
    entries = redis.Redis.from_url(redis_server.url).xrange(f"listening:{vc.guild.id}")
    layout = struct.Struct("<qIHIqdB")
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


def test_the_worker_command_records_a_stream_and_says_where(redis_url: str, tmp_path, capsys) -> None:
    import discord
    from discord.ext.listening.__main__ import main
    from discord.ext.listening.demo import load_clip
    from discord.ext.listening.opus import OpusEncoder

    enc = OpusEncoder(64000)
    pcm = load_clip("alice")[: 48000 * 4]
    sink = listening.RedisStreamSink(redis_url, guild_id=77)
    for k in range(50):
        opus = enc.encode(pcm[k * 3840 : (k + 1) * 3840])
        sink.on_audio(
            listening.AudioFrame(discord.Object(id=5), 9, k, 960 * k, opus, listening.FrameKind.opus, 960 * k, 0.0)
        )
    sink.on_stop(48000)
    sink.cleanup()
    out_dir = tmp_path / "rec"
    assert (
        main(
            [
                "worker",
                "record",
                "--redis",
                redis_url,
                "--stream",
                "listening:77",
                "--output",
                str(out_dir),
                "--timeout",
                "10",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "50 frames from listening:77" in printed and str(out_dir / "mixed.wav") in printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["5-unknown.wav", "mixed.wav"]  # the stream has ids, not names
    assert (
        main(["worker", "record", "--redis", "redis://127.0.0.1:9/0", "--stream", "x", "--output", str(out_dir)]) == 1
    )
    assert "the worker failed" in capsys.readouterr().err


async def test_a_killed_worker_is_replaced_and_the_files_are_whole_with_nothing_twice(
    pool, redis_url: str, tmp_path
) -> None:
    """A worker process is SIGKILLed mid-recording; another takes over (replaying the stream up
    to what the group handed out, claiming the dead one's pending entries) and finishes: its
    files are the bot's, byte for byte."""
    import os
    import signal
    import subprocess
    import sys

    in_bot = tmp_path / "in-bot"
    stream = None
    async with VoiceServerEmulator(seed=104, dave=False) as server:
        alice = await server.add_member(10400, "alice")
        bob = await server.add_member(10401, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        stream = f"listening:{vc.guild.id}"
        files = listening.AudioFileSink(listening.WaveAudioFile, in_bot, mixed=True, filename="{user_id}")
        published = listening.RedisStreamSink(redis_url, guild_id=vc.guild.id)
        done = await listen_until_done(vc, listening.FanOutSink(files, published), pool, decode=False)
        script = (
            "import sys; from discord.ext import listening; "
            "listening.StreamRecorder(sys.argv[1], sys.argv[2], sys.argv[3], mixed=True, filename='{user_id}', "
            "consumer='first').run()"
        )
        first = subprocess.Popen([sys.executable, "-c", script, redis_url, stream, str(tmp_path / "first")])
        talk = asyncio.gather(alice.speak(speechlike(1.5, seed=6)), bob.speak(speechlike(1.2, seed=7)))
        client = redis.Redis.from_url(redis_url)

        def handed_out() -> int:  # entries the group gave its consumers (Redis 6.2 has no "entries-read")
            groups = client.xinfo_groups(stream)
            return len(client.xrange(stream, "-", groups[0]["last-delivered-id"])) if groups else 0

        await server.wait_until(lambda: handed_out() > 60, timeout=10, what="the first worker at work")
        os.kill(first.pid, signal.SIGKILL)  # mid-recording: no clean-up of any kind
        first.wait(5)
        await talk
        await server.drain()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
    second = listening.StreamRecorder(
        redis_url, stream, tmp_path / "second", mixed=True, filename="{user_id}", consumer="second", take_over=True
    )
    paths = await asyncio.to_thread(second.run, 10)
    assert sorted(p.name for p in paths) == ["10400.wav", "10401.wav", "mixed.wav"]
    for p in paths:
        assert p.read_bytes() == (in_bot / p.name).read_bytes(), p.name  # nothing lost, nothing twice
    assert client.xpending(stream, "listening-recorders")["pending"] == 0
