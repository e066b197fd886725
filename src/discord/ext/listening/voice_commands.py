"""Voice commands: :class:`VoiceCommands` calls back when a member says one of a few phrases.

A command is an utterance that is the phrase and nothing else ("stop recording", said between
two pauses), the way people address a bot. PocketSphinx judges each short utterance in two
steps (:class:`CommandRecognizer`):

* an open decode, with a small language model of the phrases and the 1,000 commonest English
  words, says what was heard: "stop talking" comes out as itself, not as the phrase it is
  nearest to. Unless it heard exactly one of the phrases, the utterance is not a command.
* that phrase is then checked: aligned to the audio alone (a grammar of that phrase) and
  scored against a free phone loop, the best any sequence of English sounds can score.

The phrase is accepted only when its aligned words start where the voice starts and span most
of what was voiced (a phrase inside a longer sentence does not fire), and every word of it
scores close to the phone loop over the same frames (the log-likelihood ratio test of keyword
verification). The two limits are parameters; their defaults were chosen on synthetic US
English voices (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import check_int, check_number, check_seconds
from .pcm import PCMFormat
from .sphinx import FRAME_RATE, as_word, decode_utterance, sphinx_decoder, spoken
from .transcribe import Recognition, Transcriber, Word

if TYPE_CHECKING:
    import discord

    from .stream import AfterSilence

__all__ = ("CommandMatch", "CommandRecognizer", "VoiceCommand", "VoiceCommands")

_log = logging.getLogger(__name__)

#: Default :attr:`CommandRecognizer.min_score` (log units a frame; see BENCHMARKS.md).
MIN_SCORE = -30.0
#: Default :attr:`CommandRecognizer.min_coverage`.
MIN_COVERAGE = 0.75
_WORD = re.compile(r"[a-z][a-z']*")
_LOG_BASE = math.log(1.0001)  # PocketSphinx's log base
# PocketSphinx reports a grammar's word scores before the 10-bit shift applied to path and
# phone-loop scores; dividing by it puts both on one scale.
_WORD_SCORE_SHIFT = 1024
_FRAME = 160  # samples in one of PocketSphinx's 10 ms frames at 16 kHz
_VOICED_DB = 35.0  # a frame is voiced within this many dB of the utterance's loudest
_LEAD, _TAIL = 0.2, 0.5  # silence put around an utterance (it arrives trimmed)
_MAX_LEAD_FRAMES = 6  # voiced frames allowed before the phrase's first word ("the next slide")
_FILLERS = 1000  # common words the open decode may hear instead of a phrase
_PHRASE_PRIOR = 0.9  # the open decode's prior that an utterance is one of the phrases
_NOISE_FLOOR = 3.0  # int16 standard deviation (-80 dBFS) of the retry's noise floor


def _raw(value: float) -> float:
    """PocketSphinx returns scores exponentiated; this is the log score (-inf on underflow)."""
    return math.log(value) / _LOG_BASE if value > 0 else -math.inf


def _phrase(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a phrase must be a str, got {type(text).__name__}")
    words = text.lower().replace("\u2019", "'").split()
    words = [w.strip('.,!?;:"') for w in words]
    if not words or not all(_WORD.fullmatch(w) for w in words):
        raise ValueError(f"a phrase must be English words (letters and apostrophes), got {text!r}")
    return " ".join(words)


def _voiced_span(pcm: np.ndarray) -> tuple[int, int]:
    """The first and last frame within ``_VOICED_DB`` of the loudest ((0, -1) for no audio)."""
    n = len(pcm) // _FRAME
    if n == 0:
        return 0, -1
    frames = pcm[: n * _FRAME].reshape(n, _FRAME).astype(np.float64)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1.0)
    voiced = np.flatnonzero(level > level.max() - _VOICED_DB)
    return int(voiced[0]), int(voiced[-1])


def _with_noise_floor(pcm: np.ndarray) -> bytes:
    """``pcm`` with a faint, always the same, Gaussian noise floor added, as s16le."""
    noise = np.random.default_rng(0).normal(0.0, _NOISE_FLOOR, len(pcm))
    return np.clip(pcm + noise, -32768, 32767).astype(np.int16).tobytes()


def _common_words(count: int) -> list[tuple[str, float]]:
    """The ``count`` likeliest words of the bundled language model that its dictionary spells,
    with their log10 probabilities."""
    import pocketsphinx

    model_dir = os.path.join(pocketsphinx.get_model_path(), "en-us")
    lm = pocketsphinx.NGramModel.readfile(os.path.join(model_dir, "en-us.lm.bin"))
    words = []
    with open(os.path.join(model_dir, "cmudict-en-us.dict"), encoding="utf-8") as f:
        for line in f:
            word = line.split(" ", 1)[0]
            if word.isalpha() and word.islower():
                words.append(word)
    ranked = sorted(((lm.prob([w]) * math.log10(1.0001), w) for w in words), reverse=True)
    return [(w, p) for p, w in ranked[:count]]


def _write_command_lm(path: str, phrases: tuple[str, ...], fillers: list[tuple[str, float]], prior: float) -> None:
    """An ARPA bigram model: each phrase with probability ``prior / len(phrases)``, else any
    sequence of the filler words (as likely as in English) and the phrases' words."""
    phrase_words = {w for p in phrases for w in p.split()}
    known = dict(fillers)
    rare = min(known.values())
    vocab = list(dict.fromkeys([*known, *sorted(phrase_words)]))
    weights = np.array([10 ** known.get(w, rare) for w in vocab])
    probs = np.log10(weights / weights.sum() * (1 - prior))
    unigram = dict(zip(vocab, probs.tolist(), strict=True))
    firsts = collections.Counter(p.split()[0] for p in phrases)  # "volume up", "volume down"
    bigrams: dict[tuple[str, str], float] = {}
    for phrase in phrases:
        words = ["<s>", *phrase.split(), "</s>"]
        for a, b in itertools.pairwise(words):
            bigrams[(a, b)] = math.log10(prior * firsts[b] / len(phrases)) if a == "<s>" else math.log10(0.9)
    lines = ["\\data\\", f"ngram 1={len(vocab) + 2}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    lines += ["-99 <s> 0", f"{math.log10(0.1):.4f} </s> 0"]
    lines += [f"{unigram[w]:.4f} {w} {math.log10(0.1) if w in phrase_words else 0.0:.4f}" for w in vocab]
    lines += ["", "\\2-grams:"] + [f"{p:.4f} {a} {b}" for (a, b), p in bigrams.items()] + ["", "\\end\\", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


@dataclass(frozen=True, slots=True)
class CommandMatch:
    """How :meth:`CommandRecognizer.match` judged one utterance.

    Attributes
    ----------
    phrase: Optional[:class:`str`]
        The phrase accepted, or ``None``.
    candidate: Optional[:class:`str`]
        The phrase the open decode heard, accepted or not; ``None`` when it heard anything
        else (the utterance was then not checked further).
    score: :class:`float`
        The candidate's worst word's score against the phone loop, log units a frame (0 = as
        good as any sound sequence; lower is worse); ``-inf`` when there was nothing to score.
    coverage: :class:`float`
        The share of the voiced audio the candidate's words span.
    words: Tuple[:class:`Word`, ...]
        The candidate's words as aligned, seconds from the start of the audio.
    heard: :class:`str`
        What the open decode (the phrases among common words) heard.
    """

    phrase: str | None
    candidate: str | None
    score: float
    coverage: float
    words: tuple[Word, ...] = ()
    heard: str = ""


class CommandRecognizer:
    """A :class:`Recognizer` that hears only a few phrases, each said on its own.

    Its text is the phrase heard, or empty: use it with :func:`transcribe`, or through
    :class:`VoiceCommands`. PocketSphinx (extra ``[speech]``) with its US English model.

    Parameters
    ----------
    phrases: Iterable[:class:`str`]
        The commands, English words the PocketSphinx dictionary knows ("stop recording").
        Case and punctuation are ignored.
    min_score: :class:`float`
        How much worse than a free phone loop, in log units a frame, the worst word of the
        phrase may score. Higher is stricter (fewer false commands, more missed ones).
    min_coverage: :class:`float`
        The share of the voiced audio the phrase must span, within 0..1: below it the phrase
        was part of something longer.
    max_seconds: :class:`float`
        Utterances voiced longer than this are not commands, and are not decoded (it saves
        CPU on long speech).

    Raises
    ------
    ValueError
        A phrase with a word the dictionary does not know, a phrase given twice, or a limit
        out of range.
    """

    format = PCMFormat(16000, 1, "int16")
    #: PocketSphinx holds the GIL: run it in processes.
    releases_gil = False

    def __init__(
        self,
        phrases: Iterable[str],
        *,
        min_score: float = MIN_SCORE,
        min_coverage: float = MIN_COVERAGE,
        max_seconds: float = 5.0,
    ) -> None:
        if isinstance(phrases, str):
            raise TypeError("phrases must be an iterable of str, not one str")
        self.phrases: tuple[str, ...] = tuple(_phrase(p) for p in phrases)
        if not self.phrases:
            raise ValueError("phrases must name at least one phrase")
        if len(set(self.phrases)) != len(self.phrases):
            raise ValueError(f"phrases must differ, got {list(self.phrases)}")
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not math.isfinite(min_score):
            raise TypeError(f"min_score must be a finite number, got {min_score!r}")
        self.min_score = float(min_score)
        self.min_coverage = check_number("min_coverage", min_coverage)
        if self.min_coverage > 1:
            raise ValueError(f"min_coverage must be within 0..1, got {min_coverage!r}")
        self.max_seconds = check_seconds("max_seconds", max_seconds, positive=True)
        self._lock = threading.Lock()
        self._align: Any = None
        self._phones: Any = None
        self._open: Any = None
        self._check_words()

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: settings, not decoders
        return {
            "phrases": self.phrases,
            "min_score": self.min_score,
            "min_coverage": self.min_coverage,
            "max_seconds": self.max_seconds,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.phrases = state["phrases"]
        self.min_score = state["min_score"]
        self.min_coverage = state["min_coverage"]
        self.max_seconds = state["max_seconds"]
        self._lock = threading.Lock()
        self._align = self._phones = self._open = None

    def __copy__(self) -> CommandRecognizer:
        clone = CommandRecognizer.__new__(CommandRecognizer)
        clone.__setstate__(self.__getstate__())
        return clone

    def _check_words(self) -> None:
        decoder = sphinx_decoder(lm=None)  # only its dictionary: the searches are built where they run
        unknown = sorted({w for p in self.phrases for w in p.split() if decoder.lookup_word(w) is None})
        if unknown:
            raise ValueError(f"PocketSphinx's dictionary does not know {unknown}: choose other words")

    def _load(self) -> None:
        if self._align is None:
            # lm=None: each decoder gets only its own searches, not the bundled 27 MB model too
            align = sphinx_decoder(lm=None)
            for i, phrase in enumerate(self.phrases):  # one grammar a phrase, to align it alone
                align.add_jsgf_string(f"phrase{i}", f"#JSGF V1.0; grammar phrase{i}; public <phrase> = {phrase};")
            phones = sphinx_decoder(lm=None)
            phones.add_allphone_file("phones")  # no phone language model: every sequence allowed
            phones.activate_search("phones")
            open_decoder = sphinx_decoder(lm=None)
            with tempfile.TemporaryDirectory(prefix="listening-commands-") as tmp:
                path = os.path.join(tmp, "commands.arpa")
                _write_command_lm(path, self.phrases, _common_words(_FILLERS), _PHRASE_PRIOR)
                open_decoder.add_lm_file("commands", path)
            open_decoder.activate_search("commands")
            self._align, self._phones, self._open = align, phones, open_decoder

    @staticmethod
    def _decode(decoder: Any, pcm: bytes) -> tuple[Any, list[Any]]:
        hyp = decode_utterance(decoder, pcm)
        return hyp, (list(decoder.seg()) if hyp is not None else [])

    def match(self, audio: np.ndarray) -> CommandMatch:
        """Judge one utterance (16 kHz mono int16): which phrase, if any, and why.

        Parameters
        ----------
        audio: :class:`numpy.ndarray`
            The utterance, 16 kHz mono int16.

        Returns
        -------
        :class:`CommandMatch`
        """
        pcm = np.asarray(audio)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise TypeError(f"CommandRecognizer takes 1-D int16 samples, got {pcm.dtype} of shape {pcm.shape}")
        lead = np.zeros(int(_LEAD * 16000), np.int16)
        pcm = np.concatenate([lead, pcm, np.zeros(int(_TAIL * 16000), np.int16)])
        first, last = _voiced_span(pcm)
        voiced = last - first + 1
        if voiced <= 0 or voiced / FRAME_RATE > self.max_seconds:
            return CommandMatch(None, None, -math.inf, 0.0)
        data = pcm.tobytes()
        with self._lock:
            self._load()
            _, open_segments = self._decode(self._open, data)  # no segments when it heard nothing
            heard = " ".join(as_word(s).text for s in spoken(open_segments))
            if heard not in self.phrases:
                return CommandMatch(None, None, -math.inf, 0.0, (), heard)
            self._align.activate_search(f"phrase{self.phrases.index(heard)}")
            hyp, segments = self._decode(self._align, data)
            if hyp is None or hyp.hypstr != heard:
                # The grammar search can fail to reach the phrase's end across digital
                # silence (a gap between words, the zeros around the utterance): it returns
                # the words before it. A copy with a faint noise floor lets it finish.
                data = _with_noise_floor(pcm)
                hyp, segments = self._decode(self._align, data)
                if hyp is None or hyp.hypstr != heard:
                    return CommandMatch(None, heard, -math.inf, 0.0, (), heard)
            _, phone_segments = self._decode(self._phones, data)
        words = spoken(segments)
        times = tuple(as_word(s, _LEAD) for s in words)
        # The phone loop's score a frame, each phone's spread over its frames.
        per_frame = np.zeros(len(pcm) // _FRAME + 2)
        for s in phone_segments:
            per_frame[s.start_frame : s.end_frame + 1] = _raw(s.ascore) / (s.end_frame - s.start_frame + 1)
        score = min(
            (_raw(s.ascore) / _WORD_SCORE_SHIFT - per_frame[s.start_frame : s.end_frame + 1].sum())
            / (s.end_frame - s.start_frame + 1)
            for s in words
        )
        coverage = (words[-1].end_frame - words[0].start_frame + 1) / voiced
        # A phrase starts where the voice does; its end may fade below the grammar's last
        # word (releases, fricatives), which the coverage limit allows for.
        starts_first = words[0].start_frame - first <= _MAX_LEAD_FRAMES
        accepted = score >= self.min_score and coverage >= self.min_coverage and starts_first
        return CommandMatch(heard if accepted else None, heard, float(score), float(coverage), times, heard)

    def recognize(self, audio: np.ndarray) -> Recognition:
        """The phrase said in ``audio`` (16 kHz mono int16), or empty text."""
        found = self.match(audio)
        return Recognition(found.phrase, found.words) if found.phrase else Recognition("")


@dataclass(frozen=True, slots=True)
class VoiceCommand:
    """A phrase a member said.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        Who said it.
    phrase: :class:`str`
        Which of the phrases (as normalised: lower case, single spaces).
    start, end: :class:`float`
        Its seconds on the recording's timeline (0 = when ``listen`` started).
    """

    user: discord.Member | discord.Object | None
    phrase: str
    start: float
    end: float

    @property
    def user_id(self) -> int | None:
        """The speaker's user id."""
        return None if self.user is None else self.user.id


class VoiceCommands:
    """Calls ``on_command`` each time a member says one of ``phrases`` on its own.

    ::

        async def on_command(command: listening.VoiceCommand) -> None:
            if command.phrase == "stop recording":
                vc.stop_listening()

        commands = listening.VoiceCommands(["start recording", "stop recording"], on_command)
        vc.listen(listening.AudioSink(), decode=True)
        await commands.run(vc)  # until listening stops

    Parameters
    ----------
    phrases: Iterable[:class:`str`]
        The commands (see :class:`CommandRecognizer`).
    on_command: Callable[[:class:`VoiceCommand`], Any]
        Called on the event loop, in the order commands were said; a coroutine function is
        awaited before the next command. What it raises is logged and counted.
    workers: :class:`int`
        Utterances judged at once (worker processes). Defaults to 1.
    users:
        Only these members (ids or objects); everyone by default.
    end: Optional[:class:`AfterSilence`]
        The pause that ends an utterance (0.6 s by default).
    min_score, min_coverage:
        See :class:`CommandRecognizer`.
    max_pending: :class:`int`
        Utterances that may wait to be judged before new ones are dropped (counted).

    Attributes
    ----------
    fired: :class:`int`
        Commands heard.
    failed: :class:`int`
        Calls of ``on_command`` that raised.
    transcriber: Optional[:class:`Transcriber`]
        The underlying transcriber once :meth:`run` started: its counters say how many
        utterances were judged (``recognized``, ``empty``) or dropped.
    """

    def __init__(
        self,
        phrases: Iterable[str],
        on_command: Callable[[VoiceCommand], Awaitable[Any] | Any],
        *,
        workers: int = 1,
        users: Iterable[Any] | None = None,
        end: AfterSilence | None = None,
        min_score: float = MIN_SCORE,
        min_coverage: float = MIN_COVERAGE,
        max_pending: int = 32,
    ) -> None:
        if not callable(on_command):
            raise TypeError(f"on_command must be callable, got {type(on_command).__name__}")
        self.recognizer = CommandRecognizer(phrases, min_score=min_score, min_coverage=min_coverage)
        self.on_command = on_command
        self.workers = check_int("workers", workers, 1, 256)
        self.max_pending = check_int("max_pending", max_pending, 1, 1_000_000)
        self._users = users
        self._end = end
        self.fired = self.failed = 0
        self.transcriber: Transcriber | None = None

    @property
    def phrases(self) -> tuple[str, ...]:
        """The phrases listened for, normalised."""
        return self.recognizer.phrases

    async def run(self, source: Any) -> None:
        """Listen for commands until listening stops.

        Parameters
        ----------
        source: Union[:class:`VoiceClient`, :class:`AudioStream`]
            A voice client listening with ``decode=True``, or an :class:`AudioStream` in
            16 kHz mono int16.
        """
        if self.transcriber is not None:
            raise RuntimeError("VoiceCommands.run is called once")
        self.transcriber = Transcriber(
            source,
            self.recognizer,
            workers=self.workers,
            end=self._end,
            users=self._users,
            max_pending=self.max_pending,
        )
        async for line in self.transcriber:
            command = VoiceCommand(line.user, line.text, line.start, line.end)
            self.fired += 1
            try:
                result = self.on_command(command)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += 1
                _log.exception("on_command failed on %r from user %s", command.phrase, command.user_id)
