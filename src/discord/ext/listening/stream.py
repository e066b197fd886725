"""Audio on the event loop: :class:`AudioStream`, a sink whose frames and utterances are awaited.

A sink's callbacks run on the dispatcher's threads; a bot's code runs on its event loop. The
stream hands each frame (converted to the :class:`~discord.ext.listening.pcm.PCMFormat` asked
for) across in bounded queues, one per consumer, and cuts each member's audio into
utterances where the member goes quiet: Discord clients only send while their voice activity
detection or push-to-talk is open, and end each spurt with silence frames, so a pause shows as
a gap in the member's timeline or as silent frames.

A consumer that falls behind loses frames (counted in :attr:`AudioStream.dropped`), never
memory, and never holds up the receiver or other consumers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from .checks import check_seconds, check_user_id
from .frames import AudioFrame, FrameKind
from .opus import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE
from .pcm import PCMConverter, PCMFormat
from .sink import AudioSink
from .vad import VAD_RATE, VoiceActivityDetector

if TYPE_CHECKING:
    import discord

__all__ = ("AfterDuration", "AfterSilence", "AudioStream", "MixedFrame", "StreamFrame", "Subscription", "Utterance")

#: A frame whose samples all lie within this of zero is silence (what Opus silence frames and
#: the end of a concealment decode to).
SILENT_PEAK = 8
#: How far behind the timeline's present a member's frames may still be in the pipeline (jitter
#: buffer, decoders): an utterance is closed by the clock only this long after its silence.
PIPELINE_ALLOWANCE = 0.2
#: How long the live mix waits for every member's frame of a 20 ms slot before it hands the
#: slot on (members' frames reach the sink at slightly different times).
MIX_DELAY = 0.1
_VAD_FORMAT = PCMFormat(VAD_RATE, 1, "float32")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AfterSilence:
    """End an utterance once its member has been silent for ``seconds``.

    Parameters
    ----------
    seconds: :class:`float`
        The pause that ends an utterance. Defaults to 0.6.
    """

    seconds: float = 0.6

    def __post_init__(self) -> None:
        check_seconds("seconds", self.seconds, positive=True)


@dataclass(frozen=True, slots=True)
class AfterDuration:
    """End a subscription ``seconds`` after it started (on the recording's timeline).

    Parameters
    ----------
    seconds: :class:`float`
        How long it lasts.
    """

    seconds: float

    def __post_init__(self) -> None:
        check_seconds("seconds", self.seconds, positive=True)


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One member's 20 ms frame as an :class:`AudioStream` hands it to the event loop.

    Attributes
    ----------
    frame: :class:`AudioFrame`
        The frame as the sink received it (48 kHz stereo PCM in ``frame.audio``).
    audio: :class:`numpy.ndarray`
        Its audio in the stream's :class:`PCMFormat`: ``(samples,)`` mono or ``(samples, 2)``
        stereo. With resampling the resampler's delay (~30 ms) shifts samples from one frame to
        the next; the arrays of a member's frames, joined, are the member's converted audio.
    """

    frame: AudioFrame
    audio: np.ndarray

    @property
    def user(self) -> discord.Member | discord.Object | None:
        """Who spoke."""
        return self.frame.user

    @property
    def user_id(self) -> int | None:
        """The speaker's user id."""
        return self.frame.user_id

    @property
    def time(self) -> float:
        """Seconds from the start of the recording to the frame's first sample."""
        return self.frame.time


@dataclass(frozen=True, slots=True)
class Utterance:
    """What one member said between two pauses.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        Who said it.
    start: :class:`float`
        Seconds on the recording's timeline (0 = when ``listen`` started) of its first sample.
    end: :class:`float`
        Seconds on the timeline just after its last sound (trailing silence is cut off).
    audio: :class:`numpy.ndarray`
        The audio from ``start`` to ``end`` in the stream's :class:`PCMFormat`, with silence
        where no frame was sent.
    frames: Tuple[:class:`AudioFrame`, ...]
        The frames it was made of, in order.
    """

    user: discord.Member | discord.Object | None
    start: float
    end: float
    audio: np.ndarray
    frames: tuple[AudioFrame, ...]

    @property
    def user_id(self) -> int | None:
        """The speaker's user id."""
        return None if self.user is None else self.user.id

    @property
    def duration(self) -> float:
        """``end - start``."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class MixedFrame:
    """20 ms of everyone together, from :meth:`AudioStream.mixed`.

    Attributes
    ----------
    position: :class:`int`
        Sample (48 kHz) of the slot's start on the recording's timeline; slots start at
        multiples of 960.
    audio: :class:`numpy.ndarray`
        The sum of every member's audio in the slot (clipped to int16), in the stream's
        :class:`PCMFormat`.
    user_ids: FrozenSet[:class:`int`]
        Who is in it.
    """

    position: int
    audio: np.ndarray
    user_ids: frozenset[int]

    @property
    def time(self) -> float:
        """Seconds from the start of the recording to the slot's start."""
        return self.position / SAMPLE_RATE


class _LiveMix:
    """Sums every member's frames into 20 ms slots of the timeline (dispatcher thread); a slot
    goes out once the newest frame is :data:`MIX_DELAY` past it. Only slots with audio go out."""

    def __init__(self, fmt: PCMFormat) -> None:
        self.slots: dict[int, tuple[np.ndarray, set[int]]] = {}
        self.next = 0  # slots before this one went out
        self.delay = round(MIX_DELAY * SAMPLE_RATE)
        self.converter = PCMConverter(fmt)
        self.user_ends: dict[int | None, int] = {}
        self.late_samples = 0

    def add(self, frame: AudioFrame) -> list[MixedFrame]:
        samples = np.frombuffer(frame.audio, "<i2").reshape(-1, CHANNELS).astype(np.int32)
        start = frame.position
        uid = frame.user_id
        # A member's frame can overlap their previous one (a loss's concealment placed before
        # it): only the new part is added, as the member's own file takes it.
        user_end = self.user_ends.get(uid, 0)
        if start < user_end:
            samples, start = samples[user_end - start :], user_end
        if len(samples):
            self.user_ends[uid] = start + len(samples)
        floor = self.next * FRAME_SAMPLES
        if start < floor:  # part (or all) of it belongs to slots already handed on
            cut = min(floor - start, len(samples))
            self.late_samples += cut
            samples, start = samples[cut:], start + cut
        while len(samples):
            k, off = divmod(start, FRAME_SAMPLES)
            n = min(FRAME_SAMPLES - off, len(samples))
            slot = self.slots.get(k)
            if slot is None:
                slot = self.slots[k] = (np.zeros((FRAME_SAMPLES, CHANNELS), np.int32), set())
            slot[0][off : off + n] += samples[:n]
            if uid is not None:
                slot[1].add(uid)
            samples, start = samples[n:], start + n
        return self.emit(frame.position + FRAME_SAMPLES - self.delay)

    def emit(self, upto: int) -> list[MixedFrame]:
        out = []
        for k in sorted(k for k in self.slots if (k + 1) * FRAME_SAMPLES <= upto):
            pcm, users = self.slots.pop(k)
            audio = np.clip(pcm, -32768, 32767).astype("<i2").tobytes()
            out.append(MixedFrame(k * FRAME_SAMPLES, self.converter.convert(audio), frozenset(users)))
            self.next = max(self.next, k + 1)
        return out


class _LoopQueue(Generic[T]):
    """Put on any thread, taken on the event loop; past ``limit`` waiting, new items are dropped."""

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._items) >= self._limit:
                self.dropped += 1
                return
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    async def get(self) -> T:
        """The next item; :class:`StopAsyncIteration` once closed and empty."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = loop.create_future()
            await waiter


def _is_silent(frame: AudioFrame) -> bool:
    """Whether a PCM frame is silence: a silence frame, or every sample within SILENT_PEAK of zero."""
    pcm = np.frombuffer(frame.audio, "<i2")
    return frame.kind is FrameKind.silence or not pcm.size or int(np.abs(pcm).max()) <= SILENT_PEAK


def _wake(waiter: asyncio.Future[None]) -> None:
    def done() -> None:
        if not waiter.done():
            waiter.set_result(None)

    try:
        waiter.get_loop().call_soon_threadsafe(done)
    except RuntimeError:  # the consumer's loop is closed: nobody is waiting any more
        pass


class _Consumer(Generic[T]):
    """One ``async for`` over a stream: an async iterator over its own queue."""

    def __init__(self, queue: _LoopQueue[T], user_ids: frozenset[int] | None) -> None:
        self.queue = queue
        self.user_ids = user_ids

    def wants(self, user_id: int | None) -> bool:
        return self.user_ids is None or user_id in self.user_ids

    def __aiter__(self) -> _Consumer[T]:
        return self

    async def __anext__(self) -> T:
        return await self.queue.get()


class _Segmenter:
    """Cuts one consumer's view of every member's frames into utterances (dispatcher thread)."""

    def __init__(
        self, fmt: PCMFormat, silence: float, max_length: float, vad: VoiceActivityDetector | None = None
    ) -> None:
        self.format = fmt
        self.silence = round(silence * SAMPLE_RATE)
        self.max_length = round(max_length * SAMPLE_RATE)
        self.open: dict[int | None, tuple[list[AudioFrame], list[int]]] = {}  # frames, [start, voiced end]
        self.vad = vad
        self._heard: dict[int | None, tuple[PCMConverter, Callable[[np.ndarray], bool]]] = {}

    def _speech(self, frame: AudioFrame) -> bool:
        """The detector's verdict on a frame (per member: its own resampler and state)."""
        assert self.vad is not None
        heard = self._heard.get(frame.user_id)
        if heard is None:
            heard = self._heard[frame.user_id] = (PCMConverter(_VAD_FORMAT), self.vad.detector())
        return heard[1](heard[0].convert(frame.audio))

    def push(self, frame: AudioFrame, silent: bool) -> list[Utterance]:
        done: list[Utterance] = []
        if self.vad is not None and not silent:
            silent = not self._speech(frame)
        uid = frame.user_id
        current = self.open.get(uid)
        if current is not None and frame.position - current[1][1] >= self.silence:
            done.append(self._close(uid))
            current = None
        if silent:
            if current is not None:
                current[0].append(frame)
            return done
        if current is None:
            current = self.open[uid] = ([], [frame.position, frame.position])
        current[0].append(frame)
        current[1][1] = frame.position + FRAME_SAMPLES
        if current[1][1] - current[1][0] >= self.max_length:
            done.append(self._close(uid))
        return done

    def tick(self, position: int) -> list[Utterance]:
        late = round(PIPELINE_ALLOWANCE * SAMPLE_RATE)
        quiet = [uid for uid, (_, (_, end)) in self.open.items() if position - end >= self.silence + late]
        return [self._close(uid) for uid in quiet]

    def close_all(self) -> list[Utterance]:
        return [self._close(uid) for uid in list(self.open)]

    def _close(self, uid: int | None) -> Utterance:
        frames, (start, end) = self.open.pop(uid)
        kept = [f for f in frames if f.position < end]
        pcm = np.zeros((end - start, CHANNELS), np.int16)
        for f in kept:
            at = f.position - start
            samples = np.frombuffer(f.audio, "<i2").reshape(-1, CHANNELS)[: end - f.position]
            pcm[at : at + len(samples)] = samples
        audio = PCMConverter(self.format).convert(pcm.tobytes(), last=True)
        return Utterance(kept[0].user, start / SAMPLE_RATE, end / SAMPLE_RATE, audio, tuple(kept))


class AudioStream(AudioSink):
    """A sink whose audio is consumed on the event loop, frame by frame or utterance by utterance.

    ::

        stream = listening.AudioStream(format=listening.PCMFormat(16000, 1, "float32"))
        vc.listen(stream)
        async for utterance in stream.utterances():
            text = await transcribe(utterance.audio)

    Consumers should start right after ``listen`` (what arrives while a stream has no consumer
    is not kept). Each consumer gets everything from the moment it started, in order per member,
    and ends when listening stops. It needs decoded audio (``listen(decode=True)``).

    Parameters
    ----------
    format: Optional[:class:`PCMFormat`]
        The PCM shape of :attr:`StreamFrame.audio` and :attr:`Utterance.audio`; the decoders'
        own (48 kHz stereo int16) by default.
    users: Optional[Iterable[Union[:class:`discord.abc.Snowflake`, :class:`int`]]]
        Only these members' audio (all by default).
    max_queue: :class:`int`
        Items (frames, or utterances) each consumer may have waiting; past it new ones are
        dropped and counted in :attr:`dropped`. Defaults to 500 (10 s of one speaker's frames).
    """

    def __init__(
        self, *, format: PCMFormat | None = None, users: Iterable[Any] | None = None, max_queue: int = 500
    ) -> None:
        super().__init__()
        if format is not None and not isinstance(format, PCMFormat):
            raise TypeError(f"format must be a PCMFormat or None, got {type(format).__name__}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
        self.format = format if format is not None else PCMFormat()
        self.user_ids = self._ids(users)
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._frame_consumers: tuple[_Consumer[StreamFrame], ...] = ()
        self._utterance_consumers: tuple[tuple[_Consumer[Utterance], _Segmenter], ...] = ()
        self._mix_consumers: tuple[tuple[_Consumer[MixedFrame], _LiveMix], ...] = ()
        self._converters: dict[int | None, PCMConverter] = {}
        self._stopped = False

    @staticmethod
    def _ids(users: Iterable[Any] | None) -> frozenset[int] | None:
        if users is None:
            return None
        if isinstance(users, (str, bytes)) or not isinstance(users, Iterable):
            raise TypeError(f"users must be an iterable of members or ids, got {type(users).__name__}")
        return frozenset(check_user_id(u) for u in users)

    # -- consumers (event loop) --------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[StreamFrame]:
        return self._add_frames(None)

    def user(self, member: Any) -> AsyncIterator[StreamFrame]:
        """One member's frames, in order.

        Parameters
        ----------
        member: Union[:class:`discord.abc.Snowflake`, :class:`int`]
            The member (or user id).
        """
        return self._add_frames(frozenset({check_user_id(member)}))

    def utterances(
        self,
        *,
        end: AfterSilence | None = None,
        max_length: float = 30.0,
        users: Iterable[Any] | None = None,
        vad: VoiceActivityDetector | None = None,
    ) -> AsyncIterator[Utterance]:
        """Each member's speech, cut where they pause, as it ends.

        Parameters
        ----------
        end: Optional[:class:`AfterSilence`]
            The pause that ends an utterance; ``AfterSilence(0.6)`` by default.
        max_length: :class:`float`
            Seconds after which an utterance is cut even without a pause (a member who never
            stops). Defaults to 30.
        users: Optional[Iterable[Union[:class:`discord.abc.Snowflake`, :class:`int`]]]
            Only these members (within the stream's own ``users``).
        vad: Optional[:class:`VoiceActivityDetector`]
            A detector (:class:`WebRTCVAD`, :class:`SileroVAD`) that tells speech from noise
            in what members send, for members who transmit all the time; by default a pause
            is where the member stopped sending or sent silence.
        """
        end = AfterSilence() if end is None else end
        if vad is not None and not callable(getattr(vad, "detector", None)):
            raise TypeError(f"vad must be a VoiceActivityDetector (WebRTCVAD, SileroVAD), got {type(vad).__name__}")
        if not isinstance(end, AfterSilence):
            raise TypeError(f"end must be an AfterSilence, got {type(end).__name__}")
        segmenter = _Segmenter(self.format, end.seconds, check_seconds("max_length", max_length, positive=True), vad)
        consumer: _Consumer[Utterance] = _Consumer(_LoopQueue(self.max_queue), self._ids(users))
        with self._lock:
            if self._stopped:
                consumer.queue.close()
            else:
                self._utterance_consumers += ((consumer, segmenter),)
        return consumer

    def mixed(self, *, users: Iterable[Any] | None = None) -> AsyncIterator[MixedFrame]:
        """Everyone together: one :class:`MixedFrame` per 20 ms of the timeline in which anyone
        speaks, about :data:`MIX_DELAY` (0.1 s) behind the audio (frames of different members
        arrive at slightly different times). A frame later than that is left out of the mix.

        Parameters
        ----------
        users: Optional[Iterable[Union[:class:`discord.abc.Snowflake`, :class:`int`]]]
            Mix only these members (within the stream's own ``users``).
        """
        consumer: _Consumer[MixedFrame] = _Consumer(_LoopQueue(self.max_queue), self._ids(users))
        with self._lock:
            if self._stopped:
                consumer.queue.close()
            else:
                self._mix_consumers += ((consumer, _LiveMix(self.format)),)
        return consumer

    def _add_frames(self, user_ids: frozenset[int] | None) -> _Consumer[StreamFrame]:
        consumer: _Consumer[StreamFrame] = _Consumer(_LoopQueue(self.max_queue), user_ids)
        with self._lock:
            if self._stopped:
                consumer.queue.close()
            else:
                self._frame_consumers += (consumer,)
        return consumer

    @property
    def dropped(self) -> int:
        """Frames and utterances dropped because a consumer fell ``max_queue`` behind."""
        consumers: list[_Consumer[Any]] = [*self._frame_consumers]
        consumers += [c for c, _ in self._utterance_consumers] + [c for c, _ in self._mix_consumers]
        return sum(c.queue.dropped for c in consumers)

    # -- the sink (dispatcher thread) ----------------------------------------------------

    def on_audio(self, frame: AudioFrame) -> None:
        uid = frame.user_id
        if self.user_ids is not None and uid not in self.user_ids:
            return
        if frame.kind is FrameKind.opus:
            if self.error is None:
                self.error = ValueError("AudioStream needs decoded audio: listen(..., decode=True)")
            return
        frames = [c for c in self._frame_consumers if c.wants(uid)]
        if frames:
            converter = self._converters.get(uid)
            if converter is None:
                converter = self._converters[uid] = PCMConverter(self.format)
            item = StreamFrame(frame, converter.convert(frame.audio))
            for fc in frames:
                fc.queue.put(item)
        utterances = self._utterance_consumers
        if utterances:
            silent = _is_silent(frame)
            for uc, segmenter in utterances:
                if uc.wants(uid):
                    for utterance in segmenter.push(frame, silent):
                        uc.queue.put(utterance)
        for mc, mix in self._mix_consumers:
            if mc.wants(uid):
                for mixed in mix.add(frame):
                    mc.queue.put(mixed)

    def on_tick(self, position: int) -> None:
        for consumer, segmenter in self._utterance_consumers:
            for utterance in segmenter.tick(position):
                consumer.queue.put(utterance)
        late = round((MIX_DELAY + PIPELINE_ALLOWANCE) * SAMPLE_RATE)
        for mc, mix in self._mix_consumers:
            for mixed in mix.emit(position - late):
                mc.queue.put(mixed)

    def on_stop(self, position: int) -> None:
        with self._lock:
            self._stopped = True
            frames, utterances, mixes = self._frame_consumers, self._utterance_consumers, self._mix_consumers
        for consumer, segmenter in utterances:
            for utterance in segmenter.close_all():
                consumer.queue.put(utterance)
            consumer.queue.close()
        for mc, mix in mixes:
            for mixed in mix.emit(1 << 62):
                mc.queue.put(mixed)
            mc.queue.close()
        for fc in frames:
            fc.queue.close()


class Subscription(AudioStream):
    """One member's frames on the event loop while listening goes on, from
    :meth:`VoiceClient.subscribe`: ``async for frame in subscription``.

    It ends, and its ``async for`` with it, when its ``end`` condition is met, when
    :meth:`close` is called, when the member leaves the call, or when listening stops. It is an
    :class:`AudioStream` of that one member: :meth:`~AudioStream.utterances` work on it too.

    Attributes
    ----------
    user_id: :class:`int`
        The member it follows.
    end: Union[:class:`AfterSilence`, :class:`AfterDuration`, None]
        What ends it besides :meth:`close`.
    """

    def __init__(
        self,
        user_id: int,
        *,
        end: AfterSilence | AfterDuration | None,
        format: PCMFormat | None,
        max_queue: int,
        position: int,
    ) -> None:
        super().__init__(format=format, users=[user_id], max_queue=max_queue)
        if end is not None and not isinstance(end, (AfterSilence, AfterDuration)):
            raise TypeError(f"end must be AfterSilence, AfterDuration or None, got {type(end).__name__}")
        self.user_id = user_id
        self.end = end
        self._frames = self._add_frames(None)
        self._deadline = position + round(end.seconds * SAMPLE_RATE) if isinstance(end, AfterDuration) else None
        self._silence = round(end.seconds * SAMPLE_RATE) if isinstance(end, AfterSilence) else None
        self._voiced_end: int | None = None
        self._ended = False
        self._detach: Callable[[Subscription], None] | None = None  # set by the session

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StreamFrame:
        return await self._frames.__anext__()

    @property
    def ended(self) -> bool:
        """Whether it has ended (its ``async for`` stops once the frames before the end are read)."""
        return self._ended

    def close(self) -> None:
        """End it now (idempotent, any thread)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            detach, self._detach = self._detach, None
        AudioStream.on_stop(self, 0)
        if detach is not None:
            detach(self)

    def on_audio(self, frame: AudioFrame) -> None:
        if self._ended or frame.user_id != self.user_id:
            return
        if self._deadline is not None and frame.position >= self._deadline:
            self.close()
            return
        super().on_audio(frame)
        if self._silence is not None:
            if not _is_silent(frame):
                self._voiced_end = frame.position + FRAME_SAMPLES
            elif self._voiced_end is not None and frame.position - self._voiced_end >= self._silence:
                self.close()

    def on_tick(self, position: int) -> None:
        super().on_tick(position)
        late = round(PIPELINE_ALLOWANCE * SAMPLE_RATE)
        if self._deadline is not None and position >= self._deadline + late:
            self.close()
        elif self._voiced_end is not None and self._silence is not None:
            if position - self._voiced_end >= self._silence + late:
                self.close()

    def on_stop(self, position: int) -> None:
        super().on_stop(position)
        self.close()
