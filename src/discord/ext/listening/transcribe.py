"""Speech to text on the event loop: :func:`transcribe` turns members' utterances into
:class:`Transcript` lines with a :class:`Recognizer`.

Recognition is slow next to receiving (a second of speech can cost a core a second), and some
engines hold the GIL while they work (pocketsphinx does), which would stall the receiver and
the event loop. So it runs in worker processes by default (threads for engines that release
the GIL), fed from a bounded queue: a recogniser that falls behind costs latency, then
counted drops of whole utterances (:attr:`Transcriber.dropped`), never audio in a recording
made beside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .checks import check_int, check_seconds
from .pcm import PCMFormat
from .stream import AfterSilence, AudioStream, Utterance

if TYPE_CHECKING:
    import discord

    from .vad import VoiceActivityDetector

__all__ = ("Recognition", "Recognizer", "Transcriber", "Transcript", "Word", "transcribe")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word.

    Attributes
    ----------
    text: :class:`str`
        The word.
    start, end: :class:`float`
        Seconds: from the start of the audio given to :meth:`Recognizer.recognize`; on the
        recording's timeline in a :class:`Transcript`.
    """

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Recognition:
    """What a :class:`Recognizer` made of some audio: its text, and its words with their times
    when the engine gives them (else empty)."""

    text: str
    words: tuple[Word, ...] = ()


@runtime_checkable
class Recognizer(Protocol):
    """A speech recogniser: audio in the :class:`PCMFormat` it asks for, text out.

    An implementation keeps its engine out of its pickled state (it is sent to worker
    processes, and builds the engine there on first use), and one instance is used by one
    thread at a time per process. :class:`PocketSphinxRecognizer` and
    :class:`WhisperRecognizer` are the ones the package has.
    """

    #: The audio it takes (16 kHz mono float32 or int16 for most engines).
    format: PCMFormat
    #: Whether :meth:`recognize` releases the GIL while it works (threads then do instead of
    #: processes).
    releases_gil: bool

    def recognize(self, audio: np.ndarray) -> Recognition:
        """The text of ``audio`` (one utterance)."""
        ...


@dataclass(frozen=True, slots=True)
class Transcript:
    """One member's utterance as text.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        Who said it.
    start, end: :class:`float`
        The utterance's seconds on the recording's timeline (0 = when ``listen`` started).
    text: :class:`str`
        What the recogniser made of it.
    words: Tuple[:class:`Word`, ...]
        Its words with their times on the timeline, when the recogniser gives them.
    """

    user: discord.Member | discord.Object | None
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    @property
    def user_id(self) -> int | None:
        """The speaker's user id."""
        return None if self.user is None else self.user.id


# -- where recognition runs ------------------------------------------------------------------

_process_recognizer: Recognizer | None = None


def _init_process(recognizer: Recognizer) -> None:
    global _process_recognizer
    _process_recognizer = recognizer


def _recognize_in_process(audio: np.ndarray) -> Recognition:
    assert _process_recognizer is not None
    return _process_recognizer.recognize(audio)


class _ThreadRecognizers:
    """One recogniser per thread (an engine is not shared between threads)."""

    def __init__(self, recognizer: Recognizer) -> None:
        import copy
        import threading

        self._first = recognizer
        self._local = threading.local()
        self._copy = copy.copy
        self._lock = threading.Lock()
        self._taken = False

    def recognize(self, audio: np.ndarray) -> Recognition:
        mine = getattr(self._local, "recognizer", None)
        if mine is None:
            with self._lock:  # the first thread gets the user's instance, the others copies
                mine = self._copy(self._first) if self._taken else self._first
                self._taken = True
            self._local.recognizer = mine
        return mine.recognize(audio)


def _executor(recognizer: Recognizer, workers: int, processes: bool) -> concurrent.futures.Executor:
    if processes:
        return concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process,
            initargs=(recognizer,),
        )
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="listening-recognizer")


# -- transcribe ------------------------------------------------------------------------------


class Transcriber:
    """The async iterator :func:`transcribe` returns: :class:`Transcript` lines in the order
    their utterances ended.

    Attributes
    ----------
    recognized: :class:`int`
        Utterances the recogniser turned into text.
    dropped: :class:`int`
        Utterances left out because ``max_pending`` were waiting for the recogniser (and those
        the stream itself dropped: see :attr:`AudioStream.dropped`).
    failed: :class:`int`
        Utterances the recogniser raised on (logged).
    empty: :class:`int`
        Utterances in which it heard no words (no line for them).
    """

    def __init__(
        self,
        source: Any,
        recognizer: Recognizer,
        *,
        workers: int = 1,
        processes: bool | None = None,
        end: AfterSilence | None = None,
        max_length: float = 30.0,
        users: Iterable[Any] | None = None,
        vad: VoiceActivityDetector | None = None,
        max_pending: int = 32,
    ) -> None:
        if not isinstance(recognizer, Recognizer):
            raise TypeError(f"recognizer must be a Recognizer, got {type(recognizer).__name__}")
        if isinstance(source, AudioStream):
            if source.format != recognizer.format:
                raise ValueError(
                    f"the stream's format ({source.format}) must be the recognizer's ({recognizer.format}):"
                    f" make it with AudioStream(format=recognizer.format)"
                )
        elif not callable(getattr(source, "subscribe", None)):
            raise TypeError(f"source must be an AudioStream or a listening VoiceClient, got {type(source).__name__}")
        self.source = source
        self.recognizer = recognizer
        self.workers = check_int("workers", workers, 1, 256)
        self.processes = not recognizer.releases_gil if processes is None else bool(processes)
        self.max_pending = check_int("max_pending", max_pending, 1, 1_000_000)
        self._end = end
        self._max_length = check_seconds("max_length", max_length, positive=True)
        self._users = users
        self._vad = vad
        self.recognized = self.dropped = self.failed = self.empty = 0
        self._stream: AudioStream | None = None
        self._started = False

    def __aiter__(self) -> AsyncIterator[Transcript]:
        if self._started:
            raise RuntimeError("a Transcriber is iterated once")
        self._started = True
        return self._lines()

    def _attach(self) -> tuple[AudioStream, Any]:
        if isinstance(self.source, AudioStream):
            return self.source, None
        session = getattr(self.source, "_listening", None)
        if session is None or session.done:
            raise RuntimeError("not listening: call vc.listen(..., decode=True) before transcribe()")
        stream = AudioStream(format=self.recognizer.format, max_queue=self.max_pending)
        session.add_tap(stream)
        return stream, session

    async def _lines(self) -> AsyncIterator[Transcript]:
        stream, session = self._attach()
        self._stream = stream
        utterances = stream.utterances(end=self._end, max_length=self._max_length, users=self._users, vad=self._vad)
        executor = _executor(self.recognizer, self.workers, self.processes)
        run = _recognize_in_process if self.processes else _ThreadRecognizers(self.recognizer).recognize
        loop = asyncio.get_running_loop()
        waiting: deque[tuple[Utterance, asyncio.Future[Recognition]]] = deque()
        ready = asyncio.Event()
        finished = False

        async def feed() -> None:
            nonlocal finished
            try:
                async for utterance in utterances:
                    if len(waiting) >= self.max_pending:
                        self.dropped += 1
                        continue
                    waiting.append((utterance, asyncio.wrap_future(executor.submit(run, utterance.audio), loop=loop)))
                    ready.set()
            finally:
                finished = True
                ready.set()

        feeder = asyncio.ensure_future(feed())
        try:
            while True:
                if not waiting:
                    if finished:
                        break
                    ready.clear()
                    await ready.wait()
                    continue
                utterance, future = waiting[0]
                try:
                    result = await future
                except Exception:
                    self.failed += 1
                    _log.exception("the recognizer failed on an utterance of user %s", utterance.user_id)
                    waiting.popleft()
                    continue
                waiting.popleft()
                if not result.text.strip():
                    self.empty += 1
                    continue
                self.recognized += 1
                words = tuple(Word(w.text, utterance.start + w.start, utterance.start + w.end) for w in result.words)
                yield Transcript(utterance.user, utterance.start, utterance.end, result.text.strip(), words)
        finally:
            feeder.cancel()
            if session is not None:
                session.remove_tap(stream)
                stream.on_stop(0)  # ends the utterance consumer if listening goes on
            for _, future in waiting:
                future.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def stream_dropped(self) -> int:
        """Frames or utterances the underlying stream dropped (its consumer fell behind)."""
        return 0 if self._stream is None else self._stream.dropped


def transcribe(
    source: Any,
    recognizer: Recognizer,
    *,
    workers: int = 1,
    processes: bool | None = None,
    end: AfterSilence | None = None,
    max_length: float = 30.0,
    users: Iterable[Any] | None = None,
    vad: VoiceActivityDetector | None = None,
    max_pending: int = 32,
) -> Transcriber:
    """Each member's speech as text, line by line, as they speak.

    ::

        vc.listen(listening.AudioFileSink(listening.WaveAudioFile, "recordings"), decode=True)
        async for line in listening.transcribe(vc, listening.PocketSphinxRecognizer()):
            print(f"[{line.start:7.2f}] {line.user}: {line.text}")

    Parameters
    ----------
    source: Union[:class:`VoiceClient`, :class:`AudioStream`]
        A voice client that is listening with ``decode=True`` (whatever its sink: a recording
        goes on beside), or an :class:`AudioStream` in the recogniser's format.
    recognizer: :class:`Recognizer`
        The engine.
    workers: :class:`int`
        Utterances recognised at once (processes or threads). Defaults to 1.
    processes: Optional[:class:`bool`]
        Recognise in worker processes (``True``) or threads (``False``); by default processes
        unless the recogniser releases the GIL. Processes need the usual
        ``if __name__ == "__main__":`` guard in the script that starts them.
    end, max_length, users, vad:
        How utterances are cut and whose: as for :meth:`AudioStream.utterances`.
    max_pending: :class:`int`
        Utterances that may wait for the recogniser; past it new ones are dropped and counted
        in :attr:`Transcriber.dropped`. Defaults to 32.

    Returns
    -------
    :class:`Transcriber`
        An async iterator of :class:`Transcript`, in the order the utterances ended; it ends
        when listening stops.
    """
    return Transcriber(
        source,
        recognizer,
        workers=workers,
        processes=processes,
        end=end,
        max_length=max_length,
        users=users,
        vad=vad,
        max_pending=max_pending,
    )
