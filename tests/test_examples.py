"""The examples in examples/ run against the local voice server, so none of them rots.

Each test drives an example's core (not Discord's interaction API) with a real discord.py
voice client over DAVE, members speaking the bundled speech clips, and checks what a bot's
users would see: files with each member's voice where they spoke, chunks of the right
member's speech, a clip holding the last seconds of the right member.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import io
import math
import sys
import threading
import time
import types
import wave
import zipfile
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import discord
from discord import app_commands
from discord.ext import listening
from discord.ext.listening.demo import load_clip
from discord.ext.listening.pool import default as default_pool
from discord.ext.listening.testing import VoiceServerEmulator
from helpers import WireTap, as_array, decode_worker, envelope, locate, settle, wait_for_sink

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SR = 48000
SECOND = SR * 4  # bytes of one second of 48 kHz stereo s16le


def load_example(name: str) -> types.ModuleType:
    """Import examples/<name>.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


async def decoder_ready(pool: listening.AudioProcessPool, vc: listening.VoiceClient) -> None:
    """Wait (bounded) for the decode worker of this guild: on a fresh pool it starts with
    listen() and takes about a second, and audio in between would arrive in a late burst."""
    index = decode_worker(vc)
    for _ in range(500):
        if pool.worker_pids()[index] is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the decode worker did not start within 10 s")


async def until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {name: load_clip(name) for name in ("alice", "bob", "carol")}


def decode(path: Path) -> np.ndarray:
    """Any of the recording formats -> (n, 2) float array at 48 kHz."""
    out = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=SR)
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1, 2) for f in resampler.resample(frame)]
        out += [f.to_ndarray().reshape(-1, 2) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2))


def rms(audio: np.ndarray, start: float, stop: float) -> float:
    part = audio[max(0, int(start * SR)) : max(0, int(stop * SR))]
    return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0


def best_match(env: np.ndarray, ref: np.ndarray, lags: range) -> tuple[float, int]:
    """(correlation, lag): where ``env`` best lines up with ``ref[lag:]`` (zero past its end)."""
    ref = np.concatenate([ref, np.zeros(len(env) + max(lags, default=0))])
    best = (-1.0, 0)
    for lag in lags:
        r = ref[lag : lag + len(env)]
        if r.std() == 0 or env.std() == 0:
            continue
        best = max(best, (float(np.corrcoef(env, r)[0, 1]), lag))
    return best


def pcm_frame(user_id: int, position: int, value: int, samples: int = 960) -> listening.AudioFrame:
    audio = np.full((samples, 2), value, dtype="<i2").tobytes()
    return listening.AudioFrame(
        discord.Object(id=user_id), 1, position // 960, position, audio, listening.FrameKind.decoded, position, 0.0
    )


class FakeInteraction:
    """Just what the example's commands use of discord.Interaction."""

    def __init__(self, guild: discord.Guild, user: discord.Member) -> None:
        self.guild = guild
        self.user = user
        self.channel = None
        self.sent: list[tuple[str, Any, list[str]]] = []
        self.uploads: dict[str, bytes] = {}
        outer = self

        class Response:
            _done = False

            def is_done(self) -> bool:
                return self._done

            async def defer(self, *, thinking: bool = False, ephemeral: bool = False) -> None:
                self._done = True

            async def send_message(self, content: Any = None, *, ephemeral: bool = False, **kw: Any) -> None:
                self._done = True
                outer._record(content, ephemeral, kw)

        class Followup:
            async def send(self, content: Any = None, *, ephemeral: bool = False, **kw: Any) -> None:
                outer._record(content, ephemeral, kw)

        self.response = Response()
        self.followup = Followup()

    def _record(self, content: Any, ephemeral: bool, kw: dict[str, Any]) -> None:
        files = kw.get("files") or ([kw["file"]] if kw.get("file") else [])
        self.sent.append((str(content), ephemeral, [f.filename for f in files]))
        for f in files:
            self.uploads[f.filename] = f.fp.read()
            f.close()


# ---------------------------------------------------------------------------------------
# recording_bot.py
# ---------------------------------------------------------------------------------------


async def test_recording_session_writes_each_member_and_the_mix(pool, clips, tmp_path) -> None:
    rb = load_example("recording_bot")
    ids = {"alice": 1001, "bob": 1002, "carol": 1003}
    async with VoiceServerEmulator(dave=True, seed=21) as server:
        members = {name: await server.add_member(uid, name) for name, uid in ids.items()}
        vc = await server.connect(cls=listening.VoiceClient)
        assert vc._connection.dave_protocol_version == 1

        # WAV: alice alone, then bob and carol at once
        session = rb.RecordingSession(vc, tmp_path / "wav", "wav", pool=pool)
        await session.start()
        t0 = server.sender_now()  # the timeline's 0: when listening started
        await decoder_ready(pool, vc)
        assert session.recording and "being recorded" in session.notice()
        await asyncio.sleep(0.2)  # the scenario: alice starts 0.2 s into the recording
        spurts = {"alice": await members["alice"].speak(clips["alice"][:SECOND])}
        spurts["bob"], spurts["carol"] = await asyncio.gather(
            members["bob"].speak(clips["bob"][:SECOND]), members["carol"].speak(clips["carol"][:SECOND])
        )
        at = {who: spurt.start - t0 for who, spurt in spurts.items()}  # when each one's first frame was sent
        await server.drain()
        await settle(server, vc, *((members[who], [spurt]) for who, spurt in spurts.items()))
        paths = await asyncio.wait_for(session.stop(), 20)
        assert await session.stop() == paths  # idempotent
        assert session.error is None

        # Opus (decode=False) with a pause: alice, then bob while paused, then carol
        opus = rb.RecordingSession(vc, tmp_path / "opus", "opus", pool=pool)
        await opus.start()
        t1 = server.sender_now()
        said = {"alice": await members["alice"].speak(clips["alice"][: SECOND * 6 // 10])}
        await server.drain()
        await settle(server, vc, (members["alice"], [said["alice"]]))
        opus.pause()
        assert opus.paused and not opus.recording
        said["bob"] = await members["bob"].speak(clips["bob"][SECOND // 10 : SECOND * 7 // 10])  # unheard
        await server.drain()  # on the wire; let the bot read it before resuming
        await settle(server, vc, (members["bob"], [said["bob"]]))
        opus.resume()
        said["carol"] = await members["carol"].speak(clips["carol"][: SECOND * 6 // 10])
        opus_at = {who: spurt.start - t1 for who, spurt in said.items()}
        await server.drain()
        await settle(server, vc, (members["carol"], [said["carol"]]))
        opus_paths = await asyncio.wait_for(opus.stop(), 20)
        opus_stats = vc.listen_stats.total

        # FLAC and MP3: one member, to see that each format comes out playable
        encoded = {}
        for fmt in ("flac", "mp3"):
            s = rb.RecordingSession(vc, tmp_path / fmt, fmt, pool=pool, mixed=False)
            await s.start()
            spurt = await members["alice"].speak(clips["alice"][: SECOND // 2])
            await server.drain()
            await settle(server, vc, (members["alice"], [spurt]))
            encoded[fmt] = await asyncio.wait_for(s.stop(), 20)
        await vc.disconnect()

    # -- WAV: one file per member plus the mix, all aligned, each member where they spoke
    # (files come in the order the members' first frames reached the sink; frames of different
    # speakers are not ordered among themselves, so members who start together come either way)
    assert sorted(p.name for p in paths) == ["alice.wav", "bob.wav", "carol.wav", "mixed.wav"]
    assert session.user_file(ids["bob"]).name == "bob.wav" and session.mixed_file.name == "mixed.wav"
    audio = {p.stem: decode(p) for p in paths}
    assert len({len(a) for a in audio.values()}) == 1, "tracks of one recording must end on the same sample"

    def spoke(track: str, who: str, seconds: float = 1.0) -> float:
        return rms(audio[track], at[who] + 0.15, at[who] + seconds - 0.15)

    for who in ("alice", "bob", "carol"):
        assert spoke(who, who) > 500, f"{who}'s file is silent where {who} spoke"
        assert spoke("mixed", who) > 500
    assert spoke("alice", "bob") < 30 and spoke("bob", "alice") < 30 and spoke("carol", "alice") < 30
    # bob and carol spoke at the same time: each file holds its own member's voice, where
    # it was said (the timeline starts when listening started)
    for who, other in (("bob", "carol"), ("carol", "bob")):
        start = at[who] - 0.3
        env = envelope(audio[who][int(start * SR) : int((at[who] + 1.4) * SR)])
        own, offset = locate(env, envelope(clips[who][:SECOND]))
        theirs = float(np.corrcoef(env[offset : offset + 50], envelope(clips[other][:SECOND]))[0, 1])
        assert own > 0.8 and own > theirs + 0.3, (who, own, theirs)
        delay = start + offset * 0.02 - at[who]  # where the words are vs when they were said
        assert -0.05 <= delay <= 0.25, f"{who}'s words are {delay * 1000:.0f} ms off on the timeline"

    # -- Opus: the paused span is silence, and bob (who only spoke then) has no file
    assert sorted(p.name for p in opus_paths) == ["alice.opus", "carol.opus", "mixed.opus"]
    assert opus_stats.frames > 50 and opus_stats.decoded == 0, "Opus is stored as received: nothing to decode"
    mixed = decode(opus_paths[-1])
    assert rms(mixed, opus_at["alice"] + 0.1, opus_at["alice"] + 0.5) > 500
    assert rms(mixed, opus_at["carol"] + 0.1, opus_at["carol"] + 0.5) > 500
    assert rms(mixed, opus_at["bob"] + 0.1, opus_at["bob"] + 0.5) < 30

    for fmt, files in encoded.items():
        assert [p.name for p in files] == [f"alice.{fmt}"]
        assert np.sqrt(np.mean(decode(files[0]) ** 2)) > 200, f"{fmt} file without audio"

    # -- the upload chooser, with these files and a small limit
    limit = 200_000  # WAV files here are ~0.6 MB: split; many parts: zipped
    plan = rb.plan_uploads(paths, limit, work_dir=tmp_path / "upload", max_attachments=4)
    assert not plan.too_large
    check_plan(plan, limit, max_attachments=4)
    assert any(p.suffix == ".zip" for p in plan.attachments)
    assert_wavs_survive(plan, paths)
    plan.cleanup()
    assert all(not p.exists() for p in plan.created) and all(p.exists() for p in paths)


def check_plan(plan: Any, limit: int, *, max_attachments: int, margin: int = 16 * 1024) -> None:
    for batch in plan.messages:
        assert 1 <= len(batch) <= max_attachments
        assert sum(p.stat().st_size for p in batch) <= limit - margin, "a message over the upload limit"


def assert_wavs_survive(plan: Any, originals: list[Path]) -> None:
    """Every original WAV can be put back together from the attachments, sample for sample."""
    members: dict[str, bytes] = {}
    for p in plan.attachments:
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                for name in zf.namelist():
                    members[name] = zf.read(name)
        else:
            members[p.name] = p.read_bytes()

    def frames(data: bytes) -> bytes:
        with wave.open(io.BytesIO(data)) as w:
            return w.readframes(w.getnframes())

    for original in originals:
        parts = sorted(
            (n for n in members if n == original.name or n.startswith(original.stem + ".part")),
            key=lambda n: int(n.split(".part")[1].split("of")[0]) if ".part" in n else 0,
        )
        assert parts, f"{original.name} is not in the upload"
        with wave.open(str(original)) as w:
            want = w.readframes(w.getnframes())
        assert b"".join(frames(members[n]) for n in parts) == want, f"{original.name} did not survive the split"


def test_upload_plan_edge_cases(tmp_path) -> None:
    rb = load_example("recording_bot")

    def wav(name: str, seconds: float) -> Path:
        path = tmp_path / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(SR)
            rng = np.random.default_rng(len(name))
            w.writeframes(rng.integers(-3000, 3000, size=(int(seconds * SR), 2), dtype="<i2").tobytes())
        return path

    few = [wav("a.wav", 0.2), wav("b.wav", 0.2)]
    plan = rb.plan_uploads(few, 10 * 1024 * 1024, work_dir=tmp_path / "u1")
    assert plan.messages == [few] and not plan.created and not plan.too_large

    # a compressed file over the limit cannot be split: reported with its path
    big = tmp_path / "mixed.mp3"
    big.write_bytes(b"\xff" * 300_000)
    plan = rb.plan_uploads([big, *few], 200_000, work_dir=tmp_path / "u2")
    assert plan.too_large == [big] and plan.attachments == few

    # a long WAV is split into parts that each fit, and nothing is lost
    long = wav("long.wav", 3.0)  # 576 kB
    plan = rb.plan_uploads([long], 200_000, work_dir=tmp_path / "u3")
    assert len(plan.attachments) == 4 and all(p.name.startswith("long.part") for p in plan.attachments)
    check_plan(plan, 200_000, max_attachments=10)
    assert_wavs_survive(plan, [long])

    # many small files: zipped; more than fit in one archive: several, each within the limit
    many = [wav(f"m{i}.wav", 0.25) for i in range(12)]  # 48 kB each of noise (deflate gains little)
    plan = rb.plan_uploads(many, 200_000, work_dir=tmp_path / "u4")
    assert all(p.suffix == ".zip" for p in plan.attachments) and len(plan.attachments) >= 3
    check_plan(plan, 200_000, max_attachments=10)
    assert_wavs_survive(plan, many)

    with pytest.raises(ValueError):
        rb.plan_uploads(few, 20_000, work_dir=tmp_path / "u5")


async def test_recording_bot_slash_commands(pool, clips, tmp_path, monkeypatch) -> None:
    rb = load_example("recording_bot")
    posted: list[tuple[int, str]] = []

    async def fake_send(channel: Any, content: Any = None, **kw: Any) -> None:
        posted.append((channel.id, str(content)))

    monkeypatch.setattr(discord.VoiceChannel, "send", fake_send)  # no Discord API here
    bot = rb.RecordingBot(output_dir=tmp_path, pool=pool)
    commands = {c.name: c for c in bot.tree.get_commands()}
    assert set(commands) == {"join", "record", "pause", "resume", "stop", "leave"}
    record_format = next(p for p in commands["record"].parameters if p.name == "format")
    assert [c.value for c in record_format.choices] == ["wav", "flac", "mp3", "opus"]

    async with VoiceServerEmulator(dave=True, seed=22) as server:
        alice = await server.add_member(1001, "alice")
        await server.add_member(1002, "bob")
        guild = server.guild
        ask = lambda: FakeInteraction(guild, alice.member)  # noqa: E731

        await commands["join"].callback(i := ask())
        assert isinstance(guild.voice_client, listening.VoiceClient) and "Joined" in i.sent[-1][0]
        await server.wait_dave_ready()
        await commands["record"].callback(i := ask(), format=app_commands.Choice(name="FLAC", value="flac"))
        await decoder_ready(pool, guild.voice_client)
        assert "being recorded" in i.sent[-1][0] and not i.sent[-1][1]  # told publicly...
        assert (
            posted and posted[-1][0] == server.channel.id and "being recorded" in posted[-1][1]
        )  # ...and in voice chat
        await commands["record"].callback(i := ask())
        assert "Already recording" in i.sent[-1][0]

        spurt = await alice.speak(clips["alice"][: SECOND // 2])
        await commands["pause"].callback(ask())
        await commands["resume"].callback(i := ask())
        assert "resumed" in i.sent[-1][0]
        # someone joining the recorded channel is told
        joiner = guild.get_member(1002)
        await bot.on_voice_state_update(
            joiner, types.SimpleNamespace(channel=None), types.SimpleNamespace(channel=server.channel)
        )
        assert "being recorded" in posted[-1][1] and joiner.mention in posted[-1][1]
        await server.drain()
        await settle(server, guild.voice_client, (alice, [spurt]))

        await asyncio.wait_for(commands["stop"].callback(i := ask()), 30)
        uploads = [names for _, _, names in i.sent if names]
        assert uploads == [["alice.flac", "mixed.flac"]], i.sent
        assert guild.id not in bot.sessions
        await commands["stop"].callback(i := ask())
        assert "Not recording" in i.sent[-1][0]

        await commands["leave"].callback(i := ask())
        assert guild.voice_client is None and "Left" in i.sent[-1][0]


# ---------------------------------------------------------------------------------------
# live_levels.py
# ---------------------------------------------------------------------------------------


async def test_live_utterances_reach_the_callback_on_the_loop_for_the_right_members(pool, clips) -> None:
    live_mod = load_example("live_levels")
    loop_thread = threading.get_ident()
    got: list[listening.Utterance] = []
    threads: set[int] = set()

    async def transcribe(u: listening.Utterance) -> None:
        threads.add(threading.get_ident())
        await asyncio.sleep(0.05)  # a slow consumer must not hold up the sink
        got.append(u)

    async with VoiceServerEmulator(dave=True, seed=23) as server:
        alice = await server.add_member(1001, "alice")
        bob = await server.add_member(1002, "bob")
        await server.add_member(1003, "carol")  # in the call, never speaks
        vc = await server.connect(cls=listening.VoiceClient)
        levels = live_mod.Levels()
        following = asyncio.create_task(live_mod.follow(vc, transcribe, pool, levels=levels))
        await until(vc.is_listening, "listening")
        await decoder_ready(pool, vc)
        sent = {"alice": clips["alice"][: SECOND * 12 // 10], "bob": clips["bob"][SECOND // 10 : SECOND * 13 // 10]}
        talk = asyncio.gather(alice.speak(sent["alice"]), bob.speak(sent["bob"]))  # at the same time
        await until(lambda: len(levels.levels()) == 2, "levels of both speakers")
        await asyncio.sleep(0.2)  # the scenario: the levels are read 0.2 s into both speaking
        during = levels.levels()  # while both talk
        meter = levels.meter({1001: "alice", 1002: "bob"})
        await talk
        await server.drain()
        # Utterances end on their own after the pause: at the first tick (every 0.5 s) 0.5 s
        # + 0.2 s of pipeline allowance after the last sound, so within ~1.2 s.
        await until(lambda: {u.user_id for u in got} == {1001, 1002}, "both utterances to end")
        before_stop = len(got)
        vc.stop_listening()
        await asyncio.wait_for(following, 10)  # follow() returns when listening has stopped
        await vc.disconnect()

    assert threads == {loop_thread}, "the callback ran off the event loop"
    assert before_stop == len(got), "an utterance was only closed by stop, not by the pause"
    assert {u.user_id for u in got} == {1001, 1002} and all(isinstance(u.user, discord.Member) for u in got)
    assert set(during) == {1001, 1002} and all(peak > -40 for _, peak in during.values())
    assert "alice" in meter and "#" in meter
    for uid, name, other in ((1001, "alice", "bob"), (1002, "bob", "alice")):
        mine = [u for u in got if u.user_id == uid]
        assert all(u.audio.dtype == np.float32 and u.audio.ndim == 1 for u in mine)
        assert all(abs(len(u.audio) - u.duration * 16000) <= 1 for u in mine)
        # 1.2 s sent, of which ~0.8 s (bob) to 1.2 s (alice) speech: the utterances span it
        assert 0.6 <= mine[-1].end - mine[0].start <= 1.3
        # they are this member's speech, not the other's
        pcm = b"".join(f.audio for u in mine for f in u.frames)
        env = envelope(pcm)
        own, lag = best_match(env, envelope(sent[name]), range(0, 15))
        theirs, _ = best_match(env, envelope(sent[other]), range(lag, lag + 1))  # what the other said then
        assert own > 0.8 and own > theirs + 0.3, (name, own, theirs)


def test_levels_meter_reads_each_members_loudness_and_falls_when_they_stop() -> None:
    live_mod = load_example("live_levels")
    levels = live_mod.Levels()
    for k in range(5):
        levels.on_audio(pcm_frame(1, 960 * k, 3277))  # RMS 0.1 of full scale: -20 dBFS
        levels.on_audio(pcm_frame(2, 960 * k, 33))  # -60 dBFS
    now = levels.levels()
    assert now[1][0] == pytest.approx(-20.0, abs=0.01) and now[2][0] == pytest.approx(-60.0, abs=0.1)
    assert now[1][1] == pytest.approx(-20.0, abs=0.5)  # the peak, a moment later
    meter = levels.meter({1: "loud", 2: "soft"})
    assert meter.index("loud") < meter.index("soft") and meter.count("#") > 10
    time.sleep(0.25)
    later = levels.levels()
    assert later[1][0] == -math.inf  # not sending any more
    assert -26.0 < later[1][1] < -24.0  # the peak falls 20 dB a second


# ---------------------------------------------------------------------------------------
# custom_sink.py
# ---------------------------------------------------------------------------------------


async def test_clip_sink_holds_the_last_seconds_of_each_member(pool, clips, tmp_path) -> None:
    cs = load_example("custom_sink")
    # Members' sender reports on: the example keeps the last one per member, and that code must
    # run; Discord may never forward them, which the example handles by having none.
    async with VoiceServerEmulator(dave=True, seed=24, rtcp_interval=0.5) as server:
        alice = await server.add_member(1001, "alice")
        bob = await server.add_member(1002, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        sink = cs.ClipSink(seconds=1.0)
        done = asyncio.Event()

        async def after(s: Any, error: Any = None) -> None:
            done.set()

        vc.listen(sink, pool, after=after)
        await decoder_ready(pool, vc)
        said = clips["alice"][: SECOND * 16 // 10]  # 1.6 s: more than the ring keeps
        talking = asyncio.create_task(alice.speak(said))
        await until(lambda: 1001 in sink.members(), "alice's first frames")
        partial = sink.clip(1001, 1.0)  # while she talks, from the event loop thread
        alice_spurt = await talking
        await server.drain()
        await wait_for_sink(server, vc, (alice, [alice_spurt]))
        await asyncio.sleep(0.15)  # the scenario: the clip is taken 0.15 s after the last word (checked)
        alice_clip = sink.clip(1001, 1.0)
        assert sink.clip(1002) is None  # bob has not spoken
        bob_spurt = await bob.speak(clips["bob"][: SECOND * 6 // 10])
        await server.drain()
        await wait_for_sink(server, vc, (bob, [bob_spurt]))
        await asyncio.sleep(0.15)  # (the same)
        bob_clip = sink.clip(1002, 1.0)
        saved = await asyncio.to_thread(sink.save_clip, 1002, tmp_path / "bob-clip.wav", 0.8)
        members = sink.members()
        await until(lambda: alice.ssrc in sink.sender_reports, "a sender report of alice")
        reports = dict(sink.sender_reports)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
        await vc.disconnect()

    assert partial is not None and partial.shape == (SR, 2)
    assert members == {1001: "alice", 1002: "bob"}
    # alice's clip is the *last* second of what she said (then the silence since)
    ref = envelope(said)
    corr, lag = best_match(envelope(alice_clip), ref, range(0, len(ref)))
    assert alice_clip.shape == (SR, 2) and corr > 0.8, corr
    assert 28 <= lag <= 52, f"the clip starts {lag * 20} ms into her speech, not ~600-1000 ms"
    assert rms(as_array(alice_clip), 0.0, 0.4) > 500
    # bob's clip: his words at the end, alice's (said before) nowhere
    env = envelope(bob_clip)
    own, _ = best_match(env, envelope(clips["bob"][: SECOND * 6 // 10]), range(0, 1))
    own = max(own, best_match(env[-40:], envelope(clips["bob"][: SECOND * 6 // 10]), range(0, 10))[0])
    assert own > 0.8 and rms(as_array(bob_clip), 0.5, 0.8) > 300
    with wave.open(str(saved)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, SR, int(0.8 * SR))
    assert alice.ssrc in reports and reports[alice.ssrc].ssrc == alice.ssrc  # on_rtcp got sender reports
    assert sink.clip(1001) is None, "cleanup() frees the buffers"


def test_clip_sink_ring_keeps_exact_samples() -> None:
    cs = load_example("custom_sink")
    sink = cs.ClipSink(seconds=0.1)  # 4800 samples: five frames
    for k in range(8):  # frames valued 1..8; the ring keeps the last five
        sink.on_audio(pcm_frame(7, 960 * k, k + 1))
    assert (sink.clip(7, end=960 * 8)[:, 0] == np.repeat([4, 5, 6, 7, 8], 960)).all()
    assert (sink.clip(7, 0.04, end=960 * 8)[:, 1] == np.repeat([7, 8], 960)).all()
    # the member went quiet (sent nothing) for two frames: silence, not old audio
    sink.on_audio(pcm_frame(7, 960 * 10, 11))
    assert (sink.clip(7, end=960 * 11)[:, 0] == np.repeat([7, 8, 0, 0, 11], 960)).all()
    # a frame overlapping what is there keeps only its new part (its second half)
    sink.on_audio(pcm_frame(7, 960 * 10 + 480, 12))
    assert (sink.clip(7, end=960 * 12)[:, 0] == np.repeat([8, 0, 11, 12, 0], [960, 1920, 960, 480, 480])).all()
    # "now" past the newest frame: the clip ends with the silence since
    assert (sink.clip(7, end=960 * 13)[:, 0] == np.repeat([0, 11, 12, 0], [1920, 960, 480, 1440])).all()
    # a gap longer than the ring clears it all
    sink.on_audio(pcm_frame(7, 960 * 40, 13))
    assert (sink.clip(7, end=960 * 41)[:, 0] == np.repeat([0, 13], [3840, 960])).all()
    assert sink.clip(8) is None and sink.members() == {7: "7"}
    sink.on_rtcp(listening.Goodbye(listening.RTCPMessageType.goodbye, ssrcs=[1]))
    assert sink.goodbyes == {1}
    sink.cleanup()
    assert sink.clip(7) is None


async def test_clip_bot_slash_commands(pool, clips) -> None:
    cs = load_example("custom_sink")
    bot = cs.ClipBot(seconds=2.0, pool=pool)
    commands = {c.name: c for c in bot.tree.get_commands()}
    assert set(commands) == {"listen", "clip"}
    async with VoiceServerEmulator(dave=True, seed=25) as server:
        alice = await server.add_member(1001, "alice")
        bob = await server.add_member(1002, "bob")
        ask = lambda: FakeInteraction(server.guild, bob.member)  # noqa: E731
        await commands["listen"].callback(i := ask())
        vc = server.guild.voice_client
        assert isinstance(vc, listening.VoiceClient) and vc.is_listening() and "kept in memory" in i.sent[-1][0]
        await server.wait_dave_ready()
        await decoder_ready(pool, vc)
        await commands["clip"].callback(i := ask(), member=alice.member, seconds=1.0)
        assert "not heard" in i.sent[-1][0] and i.sent[-1][1]  # nothing yet, said privately
        spurt = await alice.speak(clips["alice"][: SECOND * 6 // 10])
        await server.drain()
        await until(lambda: 1001 in bot.sinks[server.guild.id].members(), "alice heard")
        await wait_for_sink(server, vc, (alice, [spurt]))
        await commands["clip"].callback(i := ask(), member=alice.member, seconds=1.5)
        assert i.sent[-1][2] == ["alice-clip.wav"] and alice.member.mention in i.sent[-1][0]
        await vc.disconnect()
        await until(lambda: not bot.sinks, "the sink to be forgotten when listening ended")
    with wave.open(io.BytesIO(i.uploads["alice-clip.wav"])) as w:
        assert (w.getframerate(), w.getnframes()) == (SR, int(1.5 * SR))
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)
    assert np.sqrt(np.mean(audio**2)) > 300, "the clip holds no speech"


# ---- the README's code ---------------------------------------------------------------------------


def readme_blocks() -> list[str]:
    text = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    blocks = text.split("```python\n")[1:]
    return [b.split("```", 1)[0] for b in blocks]


class ReadmeApi(ast.NodeVisitor):
    """What the README's code blocks name that the real objects lack.

    A small static resolver, block after block in source order: imports bind modules, a class
    call (or a call with ``cls=``, discord.py's ``connect``) binds an instance, an annotated
    parameter binds an instance of its annotation, ``async with X(...) as y`` binds ``y`` to
    an ``X``, a method's return annotation types what it returns. Each ``obj.name`` whose
    ``obj`` resolves is checked on the real module or class; each keyword argument on the
    real signature (unless it takes ``**kwargs``); each imported name on its module.
    """

    def __init__(self) -> None:
        #: name -> (object, is an instance of it)
        self.env: dict[str, tuple[Any, bool]] = {}
        self.missing: list[str] = []
        self.checked: set[str] = set()  # the variable/module names whose attributes were checked

    def resolve(self, node: ast.expr) -> tuple[Any, bool] | None:
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Await):
            return self.resolve(node.value)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is None or not hasattr(base[0], node.attr):
                return None
            return getattr(base[0], node.attr), False
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                cls = self.resolve(kw.value) if kw.arg == "cls" else None
                if cls is not None and isinstance(cls[0], type):
                    return cls[0], True
            func = self.resolve(node.func)
            if func is None or func[1]:
                return None
            if isinstance(func[0], type):
                return func[0], True
            try:
                returns = inspect.signature(func[0], eval_str=True).return_annotation
            except (TypeError, ValueError, NameError):
                return None
            return (returns, True) if isinstance(returns, type) else None
        return None

    def has(self, obj: Any, instance: bool, name: str) -> bool:
        if hasattr(obj, name):
            return True
        if not instance:
            return False
        # instance attributes: annotated on a class of the MRO, or assigned in a method
        for cls in inspect.getmro(obj):
            if name in getattr(cls, "__annotations__", {}):
                return True
            try:
                source = inspect.getsource(cls)
            except (OSError, TypeError):
                continue
            if f"self.{name} =" in source or f"self.{name}:" in source:
                return True
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = importlib.import_module(alias.name)
            self.env[alias.asname or alias.name.split(".")[0]] = (
                (module, False) if alias.asname else (importlib.import_module(alias.name.split(".")[0]), False)
            )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = importlib.import_module(node.module or "")
        for alias in node.names:
            if not hasattr(module, alias.name):
                self.missing.append(f"from {node.module} import {alias.name}")
            else:
                self.env[alias.asname or alias.name] = (getattr(module, alias.name), False)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        base = self.resolve(node.value)
        if base is not None:
            self.checked.add(ast.unparse(node.value))
            if not self.has(*base, node.attr):
                self.missing.append(f"{ast.unparse(node.value)}.{node.attr}")

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = self.resolve(node.func)
        if func is None or func[1]:
            return
        try:
            params = inspect.signature(func[0]).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in params:
                self.missing.append(f"{ast.unparse(node.func)}({kw.arg}=...)")

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)
        value = self.resolve(node.value)
        if value is not None and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.env[node.targets[0].id] = value

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for arg in node.args.args + node.args.kwonlyargs:
            kind = self.resolve(arg.annotation) if arg.annotation is not None else None
            if kind is not None and isinstance(kind[0], type):
                self.env[arg.arg] = (kind[0], True)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            value = self.resolve(item.context_expr)
            if value is not None and isinstance(item.optional_vars, ast.Name):
                self.env[item.optional_vars.id] = value
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With

    @classmethod
    def check(cls, blocks: list[str]) -> ReadmeApi:
        api = cls()
        for block in blocks:  # in order: later blocks use what earlier ones imported
            api.visit(compile(block, "README.md", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
        return api


def test_readme_quickstart_compiles_and_names_real_api() -> None:
    quickstart = next(b for b in readme_blocks() if "client.run" in b)
    namespace: dict[str, Any] = {"__name__": "readme"}  # not __main__: no pool, no token
    exec(compile(quickstart, "README.md", "exec"), namespace)
    assert callable(namespace["record"])
    api = ReadmeApi.check(readme_blocks())
    assert not api.missing, f"the README's code names what does not exist: {api.missing}"
    # the resolver really typed the objects the README uses (not a check that skips them all)
    assert {"listening", "vc", "sink", "frame", "server", "alice"} <= api.checked, sorted(api.checked)


async def test_readme_sink_and_emulator_snippets_run(
    tmp_path: Path, pool: listening.AudioProcessPool, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = readme_blocks()
    sink_code = next(b for b in blocks if "class LevelMeter" in b)
    emulator_code = next(b for b in blocks if "VoiceServerEmulator(" in b)
    wav_path = tmp_path / "hello.wav"
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(load_clip("alice")[:SECOND])
    namespace: dict[str, Any] = {"listening": listening, "numpy": np, "asyncio": asyncio}
    namespace.update(WireTap=WireTap, settle=settle)
    exec(compile(sink_code, "README.md", "exec"), namespace)
    # The snippet's top-level await runs inside a coroutine; it uses the default pool.
    body = emulator_code.replace('"hello.wav"', repr(str(wav_path))).replace("my_sink", "LevelMeter()")
    body = body.replace(
        "    vc.listen(", "    wire = WireTap(server)  # what the lossy network let through\n    vc.listen("
    )
    body += "    await server.drain()\n    await settle(server, vc, (alice, alice.sent.spurts), wire=wire)\n"
    body += "    vc.stop_listening()\n    await vc.wait_for_listen_ready(10)\n"
    source = "async def _snippet():\n" + "".join("    " + line + "\n" for line in body.splitlines())
    exec(compile(source, "README.md", "exec"), namespace)
    monkeypatch.setattr(default_pool, "_default_pool", pool)  # the snippet uses the default pool
    await asyncio.wait_for(namespace["_snippet"](), 30)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("alice ")]
    assert len(lines) > 30, "the level meter printed no frames of alice"
    peaks = [int(line.split()[-1]) for line in lines]
    assert max(peaks) > 1000, "alice's frames are silent"


async def test_transcriber_bot_posts_a_caption_per_utterance_naming_the_member(pool, clips) -> None:
    """examples/transcriber_bot.py: each member's clip becomes one caption, in the order
    spoken, naming who said it, posted with no mentions; the text is PocketSphinx's."""
    bot = load_example("transcriber_bot")
    channel = bot.PrintChannel()
    async with VoiceServerEmulator(dave=True, seed=29) as server:
        alice = await server.add_member(1001, "alice")
        bob = await server.add_member(1002, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        vc.listen(listening.AudioSink(), pool, decode=True)
        posting = asyncio.create_task(bot.post_captions(vc, channel, listening.PocketSphinxRecognizer()))
        await alice.speak(clips["alice"][: SECOND * 3])
        await asyncio.sleep(0.8)
        await bob.speak(clips["bob"][: SECOND * 3])
        await server.drain()
        await asyncio.sleep(0.5)
        vc.stop_listening()
        posted = await asyncio.wait_for(posting, 60)
        await vc.disconnect()
    assert posted == len(channel.messages) == 2
    assert [m.split("**")[1] for m in channel.messages] == ["alice", "bob"]
    assert all(m.startswith("`00:0") and len(m.split("**: ", 1)[1]) > 3 for m in channel.messages)


# ---------------------------------------------------------------------------------------
# voice_commands.py
# ---------------------------------------------------------------------------------------


async def test_voice_commands_example_records_only_between_start_and_stop(pool, tmp_path) -> None:
    """examples/voice_commands.py: a member says other things, "start recording", more, then
    "stop recording". The bot obeys both, naming the member, and its WAV file is silent where
    the member spoke before the first command and holds what was said between the two."""
    ex = load_example("voice_commands")
    said: list[str] = []

    async def announce(text: str) -> None:
        said.append(text)

    async with VoiceServerEmulator(dave=True, seed=31) as server:
        alice = await server.add_member(1001, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        recorder = ex.VoiceRecorder(vc, tmp_path, announce)
        running = asyncio.create_task(recorder.run(pool))
        t0 = server.sender_now()
        spurts = []
        for clip in ex.spoken_clips(ex.SAYS):
            spurts.append(await alice.speak(clip))
            await asyncio.sleep(1.0)
        await server.drain()
        await settle(server, vc, (alice, spurts))
        await asyncio.sleep(1.0)
        vc.stop_listening()
        await asyncio.wait_for(running, 60)
        await vc.disconnect()
    assert said == ["Recording, as alice asked.", "Recording stopped by alice."]
    assert recorder.commands.fired >= 2
    with wave.open(str(tmp_path / "1001-alice.wav"), "rb") as f:
        track = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, 2)[:, 0]

    def peak(spurt) -> int:
        start = round((spurt.start - t0) * 48000)
        part = track[start : start + len(spurt.frames) * 960]
        return int(np.abs(part).max()) if len(part) else 0

    hello, _, _, asked, _ = spurts
    assert peak(hello) == 0  # said before anyone asked: not recorded
    assert peak(asked) > 1000  # said while recording
