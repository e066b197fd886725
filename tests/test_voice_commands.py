"""Voice commands through a real listening session: eight members of the local voice server
(Discord-like defaults, DAVE) each say four commands and five distractors, all at once; every
command must fire once, for the member who said it, at the time they said it, and no
distractor may fire. Precision and recall are printed and held to the issue's 95% each (31
of 32 commands are heard here; the miss and the measurements on larger sets are in
BENCHMARKS.md).

The audio is espeak-ng speech made once by ``scripts/make_command_clips.py`` and committed
(``tests/data/voice_commands``): the same samples on every run.
"""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from discord.ext import listening
from discord.ext.listening.demo import decode_audio_file
from discord.ext.listening.testing import VoiceServerEmulator
from helpers import first_voiced_time, listen_until_done, settle

pytestmark = pytest.mark.timeout(180)

DATA = Path(__file__).parent / "data" / "voice_commands"


def _script() -> dict:
    return json.loads((DATA / "script.json").read_text())


async def test_each_spoken_command_fires_once_for_its_member_and_no_distractor_does(pool, capsys) -> None:
    script = _script()
    heard: list[listening.VoiceCommand] = []
    async with VoiceServerEmulator(seed=161, dave=True) as server:
        members = [await server.add_member(16100 + i, f"member{i}") for i in range(len(script["members"]))]
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, listening.AudioSink(), pool, decode=True)
        origin = vc._listening.origin

        def on_command(command: listening.VoiceCommand) -> None:
            heard.append(command)
            if command.phrase == "volume down":
                raise RuntimeError("a handler that fails: logged and counted, the next commands still fire")

        commands = listening.VoiceCommands(script["commands"], on_command, workers=2)
        running = asyncio.create_task(commands.run(vc))

        async def say_all(member, entry) -> list:
            audio = np.frombuffer(decode_audio_file(DATA / entry["file"], "mono"), "<i2")
            said = []
            for item in entry["items"]:
                spurt = await member.speak(audio[item["start"] : item["end"]])
                said.append((item["text"], spurt))
                await asyncio.sleep(1.0)  # a pause longer than the utterance end (0.6 s)
            return said

        said = await asyncio.gather(*(say_all(m, e) for m, e in zip(members, script["members"], strict=True)))
        await server.drain()
        await settle(server, vc, *((m, [s for _, s in items]) for m, items in zip(members, said, strict=True)))
        await asyncio.sleep(1.0)  # the last utterances end after 0.6 s of silence
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.wait_for(running, 90)

    spoken = {}  # (user id, text) -> start of the first audible frame on the timeline, per utterance
    expected = []
    for member, items in zip(members, said, strict=True):
        for text, spurt in items:
            when = first_voiced_time(server, spurt) - origin
            spoken.setdefault(member.user_id, []).append((text, when))
            if text in script["commands"]:
                expected.append((member.user_id, text, when))
    right, wrong = [], []
    for command in heard:
        match = [
            (text, when)
            for text, when in spoken[command.user_id]
            if text == command.phrase and abs(command.start - when) <= 0.1
        ]
        (right if match else wrong).append(command)
    found = {(c.user_id, c.phrase, round(c.start, 1)) for c in right}
    missed = [e for e in expected if not any(u == e[0] and p == e[1] and abs(s - e[2]) <= 0.1 for u, p, s in found)]
    precision = len(right) / max(1, len(heard))
    recall = (len(expected) - len(missed)) / len(expected)
    with capsys.disabled():
        print(
            f"\nvoice commands through the voice server: {len(expected)} commands and"
            f" {sum(len(v) for v in spoken.values()) - len(expected)} distractors from {len(members)} members;"
            f" precision {precision:.3f}, recall {recall:.3f}; wrong {[(c.user_id, c.phrase) for c in wrong]},"
            f" missed {[(u, p) for u, p, _ in missed]}"
        )
    assert len(found) == len(right), "a command fired twice"
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert commands.fired == len(heard)
    assert commands.failed == sum(c.phrase == "volume down" for c in heard) > 0
    assert commands.transcriber is not None and commands.transcriber.dropped == 0
    for member in members:  # each member's commands in the order they were said
        ends = [c.end for c in heard if c.user_id == member.user_id]
        assert ends == sorted(ends)


def test_bad_phrases_and_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="does not know"):
        listening.CommandRecognizer(["stop recording", "flurbify the zorp"])
    with pytest.raises(ValueError, match="at least one"):
        listening.CommandRecognizer([])
    with pytest.raises(TypeError, match="not one str"):
        listening.CommandRecognizer("stop recording")
    with pytest.raises(ValueError, match="must differ"):
        listening.CommandRecognizer(["Stop recording", "stop recording!"])
    with pytest.raises(ValueError, match="English words"):
        listening.CommandRecognizer(["stop 42"])
    with pytest.raises(ValueError, match="min_coverage"):
        listening.CommandRecognizer(["stop recording"], min_coverage=1.5)
    with pytest.raises(TypeError, match="on_command"):
        listening.VoiceCommands(["stop recording"], on_command="print")  # type: ignore[arg-type]
    recognizer = listening.CommandRecognizer(["Stop Recording.", "volume up"])
    assert recognizer.phrases == ("stop recording", "volume up")
    with pytest.raises(TypeError, match="int16"):
        recognizer.match(np.zeros(16000, np.float32))
    silence = recognizer.match(np.zeros(16000, np.int16))
    assert silence.phrase is None and recognizer.recognize(np.zeros(16000, np.int16)).text == ""


def test_a_phrase_with_digital_silence_between_its_words_is_still_heard() -> None:
    """espeak-ng's en-us "volume down" (set A in BENCHMARKS.md, through Opus, 16 kHz) has exact
    zeros between its words: PocketSphinx's grammar search cannot finish the phrase on it and
    returns "volume". The recogniser must still hear "volume down", with its words in place."""
    from discord.ext.listening.sphinx import decode_utterance, sphinx_decoder

    with wave.open(str(DATA / "volume_down_gaps.wav"), "rb") as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    # The premise: a grammar of the phrase alone stops after its first word on this audio.
    grammar = sphinx_decoder(lm=None)
    grammar.add_jsgf_string("p", "#JSGF V1.0; grammar p; public <p> = volume down;")
    grammar.activate_search("p")
    padded = np.concatenate([np.zeros(3200, np.int16), audio, np.zeros(8000, np.int16)])
    assert decode_utterance(grammar, padded.tobytes()).hypstr == "volume"

    found = listening.CommandRecognizer(_script()["commands"]).match(audio)
    assert found.phrase == "volume down", found
    assert [w.text for w in found.words] == ["volume", "down"]
    voiced = np.flatnonzero(np.abs(audio) > 300)
    assert abs(found.words[0].start - voiced[0] / 16000) < 0.06
    assert found.words[1].end > voiced[-1] / 16000 - 0.1
