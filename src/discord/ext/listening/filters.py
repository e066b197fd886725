"""Sinks that wrap a sink: pass on some frames, or change them on the way.

Each takes the sink it feeds as its first argument and passes every other callback
(``on_rtcp``, ``on_tick``, ``on_stop``, ``cleanup``) through unchanged, so they nest::

    sink = listening.UserFilter(listening.VolumeTransformer(files, 0.5), [alice, bob])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import check_number, check_seconds, check_user_id
from .frames import AudioFrame, FrameKind
from .opus import SAMPLE_RATE
from .sink import AudioSink

if TYPE_CHECKING:
    from .rtp import RTCPPacket

__all__ = ("ConditionalFilter", "SinkFilter", "TimedFilter", "UserFilter", "VolumeTransformer")


class SinkFilter(AudioSink):
    """Base of the wrappers: hands everything to ``sink``; subclasses decide about frames
    in :meth:`forward`.

    Parameters
    ----------
    sink: :class:`AudioSink`
        The sink that gets what passes.

    Attributes
    ----------
    passed: :class:`int`
        Frames handed on.
    filtered: :class:`int`
        Frames held back.
    """

    def __init__(self, sink: AudioSink) -> None:
        super().__init__()
        if not isinstance(sink, AudioSink):
            raise TypeError(f"sink must be an AudioSink, got {type(sink).__name__}")
        self.sink = sink
        self.passed = 0
        self.filtered = 0

    def forward(self, frame: AudioFrame) -> AudioFrame | None:
        """The frame to hand on (this one, or a changed copy), or ``None`` to hold it back."""
        return frame

    def on_audio(self, frame: AudioFrame) -> None:
        out = self.forward(frame)
        if out is None:
            self.filtered += 1
            return
        self.passed += 1
        self.sink.on_audio(out)

    def on_rtcp(self, packet: RTCPPacket) -> None:
        self.sink.on_rtcp(packet)

    def on_tick(self, position: int) -> None:
        self.sink.on_tick(position)

    def on_stop(self, position: int) -> None:
        self.sink.on_stop(position)

    def cleanup(self) -> None:
        self.sink.cleanup()

    @property
    def error(self) -> BaseException | None:
        """The wrapped sink's error (a full disk...), so ``after`` receives it."""
        return self.sink.error

    @error.setter
    def error(self, value: BaseException | None) -> None:
        self.sink.error = value


class UserFilter(SinkFilter):
    """Passes on the frames of some members only.

    Parameters
    ----------
    sink: :class:`AudioSink`
        The sink that gets their frames.
    users: Iterable[Union[:class:`discord.abc.Snowflake`, :class:`int`]]
        The members (or user ids) to keep.
    """

    def __init__(self, sink: AudioSink, users: Iterable[Any]) -> None:
        super().__init__(sink)
        if isinstance(users, (str, bytes)) or not isinstance(users, Iterable):
            raise TypeError(f"users must be an iterable of members or ids, got {type(users).__name__}")
        self.user_ids: frozenset[int] = frozenset(check_user_id(u) for u in users)

    def forward(self, frame: AudioFrame) -> AudioFrame | None:
        return frame if frame.user_id in self.user_ids else None


class TimedFilter(SinkFilter):
    """Passes on the frames of the first ``seconds`` of the recording's timeline.

    Parameters
    ----------
    sink: :class:`AudioSink`
        The sink that gets them.
    seconds: :class:`float`
        How much of the timeline (from the moment ``listen`` started) to keep; a frame that
        starts at or after it is held back.
    """

    def __init__(self, sink: AudioSink, seconds: float) -> None:
        super().__init__(sink)
        self.seconds = check_seconds("seconds", seconds, positive=True)
        self._end = round(self.seconds * SAMPLE_RATE)

    def forward(self, frame: AudioFrame) -> AudioFrame | None:
        return frame if frame.position < self._end else None


class ConditionalFilter(SinkFilter):
    """Passes on the frames for which ``predicate(frame)`` is true.

    Parameters
    ----------
    sink: :class:`AudioSink`
        The sink that gets them.
    predicate: Callable[[:class:`AudioFrame`], :class:`bool`]
        Called on the dispatcher thread for each frame; it must be quick. If it raises, the
        frame is held back and the error counted like any sink error.
    """

    def __init__(self, sink: AudioSink, predicate: Callable[[AudioFrame], bool]) -> None:
        super().__init__(sink)
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, got {type(predicate).__name__}")
        self.predicate = predicate

    def forward(self, frame: AudioFrame) -> AudioFrame | None:
        return frame if self.predicate(frame) else None


class VolumeTransformer(SinkFilter):
    """Scales PCM frames, for everyone or per member (clipped to int16).

    Opus frames (``listen(decode=False)``) pass unchanged: they are not samples.

    Parameters
    ----------
    sink: :class:`AudioSink`
        The sink that gets the scaled frames.
    volume: Union[:class:`float`, Mapping[Union[:class:`discord.abc.Snowflake`, :class:`int`], :class:`float`]]
        A factor for everyone (1.0 unchanged, 0.5 half, 2.0 double), or one per member; members
        not in the mapping get ``default``.
    default: :class:`float`
        The factor of members not in a ``volume`` mapping. Defaults to 1.0.
    """

    def __init__(self, sink: AudioSink, volume: float | Mapping[Any, float], default: float = 1.0) -> None:
        super().__init__(sink)
        self.default = check_number("default", default)
        if isinstance(volume, Mapping):
            self.volumes: dict[int, float] = {check_user_id(u): check_number("volume", v) for u, v in volume.items()}
        else:
            self.default = check_number("volume", volume)
            self.volumes = {}

    def volume_of(self, user_id: int | None) -> float:
        """The factor applied to a member's frames."""
        return self.volumes.get(user_id, self.default) if user_id is not None else self.default

    def forward(self, frame: AudioFrame) -> AudioFrame | None:
        factor = self.volume_of(frame.user_id)
        if factor == 1.0 or frame.kind is FrameKind.opus:
            return frame
        pcm = np.frombuffer(frame.audio, "<i2").astype(np.float32) * factor
        audio = np.clip(np.rint(pcm), -32768, 32767).astype("<i2").tobytes()
        return AudioFrame(
            frame.user,
            frame.ssrc,
            frame.sequence,
            frame.timestamp,
            audio,
            frame.kind,
            frame.position,
            frame.arrival,
            frame.audio_level,
        )
