"""The command line: ``python -m discord.ext.listening demo|record``.

The demo runs as a user runs it (a subprocess) and its files are read back with libsndfile.
The ``record`` command needs Discord, so its error paths are driven through the CLI with
Discord's side faked only where it must be (a token Discord rejects), its channel checks
run against the real discord.py cache of the local voice server's client, and the
recording core it shares with the demo (:func:`record_channel`) records a member of the
local voice server.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import discord
from discord.ext import listening
from discord.ext.listening.__main__ import main
from discord.ext.listening.demo import CLIPS, load_clip
from discord.ext.listening.recorder import RecordError, _check_channel, record_channel
from discord.ext.listening.report import ProgressPrinter
from discord.ext.listening.testing import VoiceServerEmulator
from discord.ext.listening.testing.harness import voice_channel_payload
from helpers import envelope, locate, settle

pytestmark = pytest.mark.timeout(90)

SR = 48000
#: RMS (of 16-bit samples) over 20 ms that counts as audible speech: about -30 dBFS.
AUDIBLE = 1000.0


def read_wav(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == SR and data.shape[1] == 2, (path, rate, data.shape)
    return data


def summary_rows(text: str) -> dict[str, str]:
    """The closing table's rows (after its ``user ... file`` header), by their first column."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"user\s+speech s\s+packets", line))
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows[line.split()[0]] = line
    return rows


def best_clip(audio: np.ndarray, clips: dict[str, bytes]) -> tuple[str, float]:
    """The clip whose loudness envelope lines up best somewhere in ``audio``, and how well."""
    track = envelope(audio)
    scores = {name: locate(track, envelope(pcm))[0] for name, pcm in clips.items()}
    name = max(scores, key=scores.__getitem__)
    return name, scores[name]


# ---------------------------------------------------------------------------------------
# demo: the README's main job, as a user runs it
# ---------------------------------------------------------------------------------------


def test_demo_records_every_member_and_the_mix(tmp_path: Path) -> None:
    _run_demo_and_check(tmp_path)


def test_demo_through_redis_records_the_same_with_a_worker_beside_the_bot(tmp_path: Path, redis_url: str) -> None:
    """``demo --redis URL``: the bot publishes Opus to Redis, a worker beside it writes the files
    (member names come through the stream)."""
    _run_demo_and_check(tmp_path, "--redis", redis_url)


def _run_demo_and_check(tmp_path: Path, *options: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "discord.ext.listening", "demo", "--output", str(tmp_path / "out"), *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (out_dir,) = (tmp_path / "out").iterdir()  # one directory named after the start time
    names = [name for _, name, _, _, _ in CLIPS]
    expected = {f"{name}.wav" for name in names} | {"mixed.wav"}
    assert {p.name for p in out_dir.iterdir()} == expected

    audio = {p.stem: read_wav(p) for p in out_dir.iterdir()}
    lengths = {stem: len(a) for stem, a in audio.items()}
    assert len(set(lengths.values())) == 1, f"the tracks do not end on the same sample: {lengths}"
    clips = {name: load_clip(clip) for _, name, clip, _, _ in CLIPS}
    for name in names:
        loudest = envelope(audio[name]).max()
        assert loudest > AUDIBLE, f"{name}.wav holds no audible speech (loudest 20 ms: RMS {loudest:.0f})"
        heard, score = best_clip(audio[name], clips)
        assert heard == name and score > 0.8, f"{name}.wav sounds like {heard}'s clip (correlation {score:.2f})"
    assert envelope(audio["mixed"]).max() > AUDIBLE

    rows = summary_rows(done.stdout)
    for name in names:
        assert name in rows, f"the summary does not name {name}:\n{done.stdout}"
        assert str(out_dir / f"{name}.wav") in rows[name]
    assert str(out_dir / "mixed.wav") in rows["(everyone)"]
    assert "0 dropped; 5 files written." in done.stdout
    assert "error" not in done.stderr.lower(), done.stderr


# ---------------------------------------------------------------------------------------
# record: what a user who got something wrong sees
# ---------------------------------------------------------------------------------------

RECORD = ["record", "--guild", "123", "--channel", "456"]


@pytest.mark.parametrize("token", [None, "", "   "])
def test_record_without_a_token_says_to_set_it(token: Any, monkeypatch, capsys, tmp_path: Path) -> None:
    if token is None:
        monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    else:
        monkeypatch.setenv("DISCORD_TOKEN", token)
    assert main([*RECORD, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "set DISCORD_TOKEN" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("duration", ["0", "-3"])
def test_record_rejects_a_duration_that_is_not_positive(duration: str, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "a-token")

    async def must_not_log_in(self: discord.Client, token: str) -> None:
        raise AssertionError("record logged in despite a bad --duration")

    monkeypatch.setattr(discord.Client, "login", must_not_log_in)
    assert main([*RECORD, "--duration", duration, "--output", str(tmp_path)]) == 2
    assert "--duration must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "words"),
    [(["--split", "0.5"], "--split must be at least 1 second"), (["--max-size", "0.01"], "--max-size must be")],
)
def test_record_rejects_parts_too_small(option: list[str], words: str, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "a-token")
    assert main([*RECORD, *option, "--output", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(("users", "words"), [("12,x", "comma-separated integers"), (",", "at least one user id")])
def test_record_says_what_is_wrong_with_users(users: str, words: str, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*RECORD, "--users", users, "--output", str(tmp_path)])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_record_with_a_token_discord_rejects(monkeypatch, capsys, tmp_path: Path) -> None:
    """Discord's side is faked: its answer to a bad token (discord.py raises LoginFailure)."""
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-real-token")
    tokens: list[str] = []

    async def rejecting_login(self: discord.Client, token: str) -> None:
        tokens.append(token)
        raise discord.LoginFailure("Improper token has been passed.")

    monkeypatch.setattr(discord.Client, "login", rejecting_login)
    assert main([*RECORD, "--output", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert tokens == ["not-a-real-token"]
    assert "error: Discord rejected the token in DISCORD_TOKEN" in err
    assert "Traceback" not in err + out
    assert list(tmp_path.iterdir()) == []


# _check_channel against the real discord.py cache of the emulator's client


async def test_check_channel_accepts_the_voice_channel_and_names_what_is_wrong() -> None:
    async with VoiceServerEmulator(dave=False) as server:
        client, guild = server.client, server.guild
        assert _check_channel(client, guild.id, server.channel.id) is server.channel

        with pytest.raises(RecordError, match=f"not in a guild with id {guild.id + 1}"):
            _check_channel(client, guild.id + 1, server.channel.id)
        with pytest.raises(
            RecordError, match=f"'Listening test guild' has no channel with id {server.channel.id + 99}"
        ):
            _check_channel(client, guild.id, server.channel.id + 99)

        # channels that are not voice channels, created through discord.py's own parser
        state = server.harness.state
        text = {
            "id": str(guild.id + 10),
            "type": 0,
            "guild_id": str(guild.id),
            "name": "chat",
            "position": 5,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
        }
        stage = {**voice_channel_payload(guild.id + 11, guild.id, "talks", 6), "type": 13}
        state.parse_channel_create(text)
        state.parse_channel_create(stage)
        with pytest.raises(RecordError, match="channel 'chat' is a text channel, not a voice channel"):
            _check_channel(client, guild.id, guild.id + 10)
        with pytest.raises(RecordError, match="'talks' is a stage channel \\(not supported\\)"):
            _check_channel(client, guild.id, guild.id + 11)


async def test_check_channel_names_the_missing_permissions() -> None:
    async with VoiceServerEmulator(dave=False) as server:
        client, guild, channel = server.client, server.guild, server.channel
        state = server.harness.state
        everyone = guild.default_role
        # The emulated guild is the bot's own (an owner has every permission): another user
        # owns it now, @everyone keeps the voice and general permissions (GUILD_UPDATE).
        state.parse_guild_update(
            {
                "id": str(guild.id),
                "name": guild.name,
                "owner_id": str(guild.id + 500),
                "roles": [
                    {
                        "id": str(everyone.id),
                        "name": "@everyone",
                        "permissions": str(everyone.permissions.value),
                        "position": 0,
                        "color": 0,
                        "hoist": False,
                        "managed": False,
                        "mentionable": False,
                        "flags": 0,
                    }
                ],
            }
        )
        assert guild.owner_id != client.user.id
        assert _check_channel(client, guild.id, channel.id) is channel

        def deny(**perms: bool) -> None:  # CHANNEL_UPDATE with an overwrite for @everyone
            payload = voice_channel_payload(channel.id, guild.id, channel.name, channel.position)
            payload["permission_overwrites"] = [
                {"id": str(everyone.id), "type": 0, "allow": "0", "deny": str(discord.Permissions(**perms).value)}
            ]
            state.parse_channel_update(payload)

        deny(connect=True)
        with pytest.raises(RecordError, match="lacks the connect permission\\(s\\) in 'General'"):
            _check_channel(client, guild.id, channel.id)
        deny(view_channel=True, connect=True)
        with pytest.raises(RecordError, match="lacks the view_channel, connect permission"):
            _check_channel(client, guild.id, channel.id)


# ---------------------------------------------------------------------------------------
# record_channel: the recording core of both commands, against the local voice server
# ---------------------------------------------------------------------------------------


async def test_record_channel_records_until_the_duration_is_over(pool, tmp_path: Path, capsys) -> None:
    """As ``record --duration 3``: the stop event never fires, ``keep_going`` ends it."""
    clip = load_clip("alice")[: 2 * SR * 4]  # two seconds
    out_dir = tmp_path / "rec"
    async with VoiceServerEmulator(seed=5) as server:
        alice = await server.add_member(1001, "alice")
        await server.add_member(1002, "bob")  # in the call, silent
        vc = await server.connect(cls=listening.VoiceClient)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        started: list[ProgressPrinter] = []
        speaking: list[asyncio.Task[Any]] = []

        async def until(progress: ProgressPrinter) -> None:
            started.append(progress)
            speaking.append(asyncio.create_task(alice.speak(clip)))
            await asyncio.Event().wait()  # Ctrl-C never comes

        recording = await record_channel(
            vc,
            pool,
            out_dir,
            until,
            interval=0.5,
            keep_going=lambda: loop.time() < deadline,
        )
        await speaking[0]
        assert not vc.is_connected()
    out, err = capsys.readouterr()
    assert recording.exit_code == 0 and recording.error is None, err
    assert started and "Traceback" not in err and "error" not in err

    # the files: alice's (default name: id-name) and the mix, as long as the recording
    assert sorted(p.name for p in out_dir.iterdir()) == ["1001-alice.wav", "mixed.wav"]
    assert sorted(recording.paths) == sorted(out_dir.iterdir())
    mine, mixed = read_wav(out_dir / "1001-alice.wav"), read_wav(out_dir / "mixed.wav")
    assert len(mine) == len(mixed) >= 3 * SR
    heard, score = best_clip(mine, {"alice": clip, "bob": load_clip("bob")[: 2 * SR * 4]})
    assert heard == "alice" and score > 0.8, (heard, score)
    assert np.array_equal(mine, mixed), "alone, alice is the whole mix"

    # what the recorder prints: progress lines naming her, then the summary table
    assert re.search(r"^\[\s*\d+\.\ds\] >?alice\s", out, re.M), out
    rows = summary_rows(out)
    assert set(rows) == {"alice", "(everyone)"}
    assert str(out_dir / "1001-alice.wav") in rows["alice"]
    assert str(out_dir / "mixed.wav") in rows["(everyone)"]
    speech = float(rows["alice"].split()[1])
    assert 1.0 <= speech <= 2.0, rows["alice"]


async def test_record_channel_records_only_the_members_asked_for(pool, tmp_path: Path, capsys) -> None:
    """As ``record --users 1002``: alice and bob speak, only bob is recorded, the mix too."""
    out_dir = tmp_path / "rec"
    clips = {name: load_clip(name)[: SR * 4] for name in ("alice", "bob")}  # a second each
    async with VoiceServerEmulator(seed=7) as server:
        alice = await server.add_member(1001, "alice")
        bob = await server.add_member(1002, "bob")
        vc = await server.connect(cls=listening.VoiceClient)

        async def until(progress: ProgressPrinter) -> None:
            await asyncio.gather(alice.speak(clips["alice"]), bob.speak(clips["bob"]))
            await server.drain()
            await asyncio.sleep(0.3)

        recording = await record_channel(vc, pool, out_dir, until, interval=3600, users=[1002])
    assert recording.exit_code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["1002-bob.wav", "mixed.wav"]
    bobs, mixed = read_wav(out_dir / "1002-bob.wav"), read_wav(out_dir / "mixed.wav")
    heard, score = best_clip(bobs, clips)
    assert heard == "bob" and score > 0.8, (heard, score)
    assert np.array_equal(bobs, mixed[: len(bobs)]) and not mixed[len(bobs) :].any()  # alice in no file


async def test_record_channel_splits_the_recording_into_numbered_parts(pool, tmp_path: Path, capsys) -> None:
    """As ``record --split 1``: 2.5 s of speech, three numbered parts per track."""
    out_dir = tmp_path / "rec"
    async with VoiceServerEmulator(seed=8) as server:
        alice = await server.add_member(1001, "alice")
        vc = await server.connect(cls=listening.VoiceClient)

        async def until(progress: ProgressPrinter) -> None:
            await alice.speak(load_clip("alice")[: SR * 4 * 5 // 2])
            await server.drain()
            await asyncio.sleep(0.2)

        recording = await record_channel(vc, pool, out_dir, until, interval=3600, max_file_seconds=1.0)
    assert recording.exit_code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names[:3] == ["1001-alice-001.wav", "1001-alice-002.wav", "1001-alice-003.wav"], names
    assert names[3:6] == ["mixed-001.wav", "mixed-002.wav", "mixed-003.wav"], names
    assert sorted(recording.paths) == sorted(out_dir.iterdir())
    assert [len(read_wav(out_dir / n)) for n in names[:2]] == [SR, SR]


async def test_record_channel_exits_1_and_prints_the_error_when_the_files_fail(pool, tmp_path: Path, capsys) -> None:
    """The output directory vanishes after listening started (a file takes its place):
    the member's file cannot be created, ``after`` gets the error, the exit code is 1.
    The recording ends as soon as ``until`` returns."""
    out_dir = tmp_path / "rec"
    async with VoiceServerEmulator(seed=6) as server:
        alice = await server.add_member(1001, "alice")
        vc = await server.connect(cls=listening.VoiceClient)

        async def until(progress: ProgressPrinter) -> None:
            shutil.rmtree(out_dir)
            out_dir.write_bytes(b"not a directory")
            spurt = await alice.speak(load_clip("alice")[: SR * 4])
            await server.drain()
            await settle(server, vc, (alice, [spurt]))

        # No progress tick comes before the end: the recording ends when ``until`` returns
        # (were it to wait for a tick, the test would time out).
        recording = await record_channel(vc, pool, out_dir, until, interval=3600)
    out, err = capsys.readouterr()
    assert recording.exit_code == 1
    assert isinstance(recording.error, OSError), recording.error
    assert f"error: {recording.error}" in err
    assert str(out_dir) in str(recording.error)
    assert "alice" in summary_rows(out)  # the summary still says what was heard
    assert len(re.findall(r"^\[", out, re.M)) == 1, out  # the closing progress line only
