"""Speech to text from a real listening session: members of the local voice server say the
bundled clips; ``transcribe`` must attribute each line to who said it, at the time they said
it, with text a real recogniser made of it, while a recording beside it loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from discord.ext import listening
from discord.ext.listening.demo import clip_text, load_clip
from discord.ext.listening.testing import VoiceServerEmulator, speechlike
from discord.ext.listening.testing.scoring import word_error_rate
from helpers import first_voiced_time, listen_until_done, settle

pytestmark = pytest.mark.timeout(120)


async def _say_in_turn(server, vc, done, turns) -> list:
    spoken = []
    for member, audio in turns:
        spoken.append((member, await member.speak(audio)))
        await asyncio.sleep(0.9)  # a pause longer than the utterance's end of 0.6 s
    await server.drain()
    members = {m for m, _ in turns}
    await settle(server, vc, *((m, [s for who, s in spoken if who is m]) for m in members))
    vc.stop_listening()
    await asyncio.wait_for(done.wait(), 15)
    return spoken


async def _two_members_say_their_clips(recognizer, seed: int, tmp_path: Path, pool) -> tuple[list, list, list]:
    """alice and bob say their clips in turn through the voice server (DAVE), recorded to WAV
    beside the transcription: the lines, who said what (member, spurt) and the word error
    rates. Each line must be the right member's, start within 100 ms of the first audible
    packet and hold the whole clip."""
    lines: list[listening.Transcript] = []
    async with VoiceServerEmulator(seed=seed, dave=True) as server:
        alice = await server.add_member(seed * 100, "alice")
        bob = await server.add_member(seed * 100 + 1, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(listening.WaveAudioFile, tmp_path, filename="{user_id}")
        done = await listen_until_done(vc, files, pool, decode=True)
        origin = vc._listening.origin
        transcriber = listening.transcribe(vc, recognizer)

        async def collect() -> None:
            async for line in transcriber:
                lines.append(line)

        collecting = asyncio.create_task(collect())
        spoken = await _say_in_turn(server, vc, done, [(alice, load_clip("alice")), (bob, load_clip("bob"))])
        await asyncio.wait_for(collecting, 60)
    assert [t.user_id for t in lines] == [alice.user_id, bob.user_id]
    assert transcriber.recognized == 2 and transcriber.dropped == transcriber.failed == 0
    errors = []
    for line, (member, spurt), clip in zip(lines, spoken, ("alice", "bob"), strict=True):
        said = first_voiced_time(server, spurt) - origin
        assert abs(line.start - said) <= 0.1, (member.name, line.start, said)
        assert line.end > line.start + 5  # the whole clip is one utterance (~7 s)
        assert line.words and all(line.start <= w.start <= w.end <= line.end + 0.05 for w in line.words)
        errors.append(word_error_rate(clip_text(clip), line.text))
    return lines, spoken, errors


async def test_pocketsphinx_lines_name_the_speaker_at_the_time_spoken_beside_a_whole_recording(
    pool, tmp_path: Path, capsys
) -> None:
    """Two members say their clips in turn: two lines, each the right member's, at the time
    spoken; the word error rate is reported; the WAV files recorded at the same time hold
    every frame."""
    _, spoken, errors = await _two_members_say_their_clips(listening.PocketSphinxRecognizer(), 151, tmp_path, pool)
    with capsys.disabled():
        print(f"\nPocketSphinx word error rate on the clips: {errors}")
    assert max(errors) < 1.5  # reported, not judged: PocketSphinx is weak on synthetic voices
    for member, spurt in spoken:  # the recording beside: every frame sent is in the file
        with open(tmp_path / f"{member.user_id}.wav", "rb") as f:
            samples = (len(f.read()) - 44) // 4
        assert samples >= len(spurt.frames) * 960


async def test_whisper_adapter_loads_a_real_model_file_and_transcribes_each_utterance(pool, tmp_path: Path) -> None:
    """faster-whisper with a converted model file made here (tiny and random, so its text is
    a planted "hello world"): the adapter's loading and calling code, through the voice server."""
    pytest.importorskip("faster_whisper", reason="the [whisper] extra is part of the test extra")
    from discord.ext.listening.testing.tiny_whisper import EXPECTED_TEXT, make_tiny_whisper

    model = make_tiny_whisper(tmp_path)
    recognizer = listening.WhisperRecognizer(model, local_files_only=True, beam_size=1, language="en")
    lines: list[listening.Transcript] = []
    async with VoiceServerEmulator(seed=152, dave=False) as server:
        alice = await server.add_member(15200, "alice")
        bob = await server.add_member(15201, "bob")
        vc = await server.connect(cls=listening.VoiceClient)
        done = await listen_until_done(vc, listening.AudioSink(), pool, decode=True)
        transcriber = listening.transcribe(vc, recognizer, workers=2)
        assert not transcriber.processes  # CTranslate2 releases the GIL: threads

        async def collect() -> None:
            async for line in transcriber:
                lines.append(line)

        collecting = asyncio.create_task(collect())
        await _say_in_turn(server, vc, done, [(alice, speechlike(1.0, seed=1)), (bob, speechlike(0.8, seed=2))])
        await asyncio.wait_for(collecting, 60)
    assert [(t.user_id, t.text) for t in lines] == [(15200, EXPECTED_TEXT.strip()), (15201, EXPECTED_TEXT.strip())]
    assert [w.text for w in lines[0].words] == EXPECTED_TEXT.split()


async def test_whisper_with_a_real_model_writes_what_each_member_said(pool, tmp_path: Path, capsys) -> None:
    """faster-whisper with OpenAI's tiny.en (fetched from PyPI at set-up): the same two
    members, and this time the words are the clips' (word error rate 0.09 and 0.22 offline)."""
    from discord.ext.listening.testing.whisper_model import tiny_en_path

    model = tiny_en_path()
    assert (model / "model.bin").exists(), "run the tests with `python3 dev.py test`: its set-up fetches tiny.en"
    recognizer = listening.WhisperRecognizer(model, local_files_only=True, language="en")
    lines, _, errors = await _two_members_say_their_clips(recognizer, 154, tmp_path, pool)
    with capsys.disabled():
        print(f"\nwhisper tiny.en word error rate on the clips: {errors}: {[t.text for t in lines]}")
    assert max(errors) < 0.35, errors


class _SlowRecognizer:
    """Takes 1.5 s an utterance: a recogniser that cannot keep up."""

    format = listening.PCMFormat(16000, 1, "int16")
    releases_gil = True

    def __init__(self) -> None:
        self.calls = 0

    def recognize(self, audio: np.ndarray) -> listening.Recognition:
        self.calls += 1
        time.sleep(1.5)
        return listening.Recognition(f"{len(audio)} samples")


async def test_a_recognizer_that_falls_behind_costs_counted_drops_never_the_recording(pool, tmp_path: Path) -> None:
    lines: list[listening.Transcript] = []
    async with VoiceServerEmulator(seed=153, dave=False) as server:
        alice = await server.add_member(15300, "alice")
        vc = await server.connect(cls=listening.VoiceClient)
        files = listening.AudioFileSink(listening.WaveAudioFile, tmp_path, filename="{user_id}")
        done = await listen_until_done(vc, files, pool, decode=True)
        transcriber = listening.transcribe(vc, _SlowRecognizer(), max_pending=1, end=listening.AfterSilence(0.2))

        async def collect() -> None:
            async for line in transcriber:
                lines.append(line)

        collecting = asyncio.create_task(collect())
        spurts = []
        for k in range(4):  # four short utterances 0.4 s apart: the recogniser takes 1.5 s each
            spurts.append(await alice.speak(speechlike(0.3, seed=k)))
            await asyncio.sleep(0.4)
        await server.drain()
        await settle(server, vc, (alice, spurts))
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.wait_for(collecting, 30)
    assert transcriber.dropped >= 1 and transcriber.recognized + transcriber.dropped == 4
    assert len(lines) == transcriber.recognized
    with open(tmp_path / f"{alice.user_id}.wav", "rb") as f:  # the recording: every frame
        assert (len(f.read()) - 44) // 4 >= sum(len(s.frames) for s in spurts) * 960


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(TypeError, match="recognizer must be a Recognizer"):
        listening.transcribe(listening.AudioStream(), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be the recognizer's"):
        listening.transcribe(listening.AudioStream(), listening.PocketSphinxRecognizer())
    with pytest.raises(TypeError, match="source must be an AudioStream or a listening VoiceClient"):
        listening.transcribe("vc", listening.PocketSphinxRecognizer())
    with pytest.raises(ValueError, match="workers must be within"):
        listening.transcribe(
            listening.AudioStream(format=listening.PocketSphinxRecognizer.format), _SlowRecognizer(), workers=0
        )
    with pytest.raises(TypeError, match="PocketSphinxRecognizer takes int16"):
        listening.PocketSphinxRecognizer().recognize(np.zeros(160, np.float32))
    with pytest.raises(TypeError, match="no option"):
        listening.PocketSphinxRecognizer(beem=1e-40)
    with pytest.raises(ValueError, match="cannot read"):
        listening.PocketSphinxRecognizer(beam="wide")


def test_pocketsphinx_options_the_model_also_sets_are_honoured() -> None:
    """The bundled model's feat.params sets cmn, remove_noise and other feature options: one
    given by the user must win over it, not be dropped without a word."""
    pcm = listening.PCMConverter(listening.PocketSphinxRecognizer.format).convert(load_clip("dave"), last=True)
    audio = np.frombuffer(pcm, "<i2")
    default = listening.PocketSphinxRecognizer().recognize(audio).text
    assert word_error_rate(clip_text("dave"), default) < 0.5
    # no cepstral mean normalisation: the model hears nonsense, so the option took effect
    unnormalised = listening.PocketSphinxRecognizer(cmn="none").recognize(audio).text
    assert word_error_rate(clip_text("dave"), unnormalised) > 0.8
