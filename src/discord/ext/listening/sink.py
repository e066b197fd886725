"""Sinks: where received audio goes.

A sink's callbacks run on the sink dispatcher's threads (never on discord.py's
socket thread, never on the event loop), one call at a time, in order per user. A callback
that raises is logged and counted; listening goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .frames import AudioFrame
from .seqmath import seq_diff

if TYPE_CHECKING:
    from .rtp import RTCPPacket

__all__ = ("AudioHandlingSink", "AudioSink", "FanOutSink")

_log = logging.getLogger(__name__)


class AudioSink:
    """Base class of everything that receives audio from :meth:`VoiceClient.listen`.

    Override any of the methods; the defaults do nothing. A subclass that calls
    ``super().__init__()`` and overrides :meth:`on_audio`, :meth:`on_rtcp` and
    :meth:`cleanup` is a working sink.

    Attributes
    ----------
    error: Optional[:class:`BaseException`]
        A sink that fails for good (a full disk...) sets this; the ``after`` callback of
        :meth:`VoiceClient.listen` then receives it as its error.
    """

    error: BaseException | None = None

    def __init__(self) -> None:
        pass

    def on_audio(self, frame: AudioFrame) -> None:
        """Called for every frame of every user, in order per user.

        Parameters
        ----------
        frame: :class:`AudioFrame`
            20 ms of one user's audio (or the Opus packet with ``decode=False``); concealed
            frames (``frame.concealed``) stand in for lost packets.
        """

    def on_rtcp(self, packet: RTCPPacket) -> None:
        """Called for every RTCP packet received (sender reports, goodbyes...)."""

    def on_tick(self, position: int) -> None:
        """Called about every half second while listening, between frames.

        Only sinks that override it are called: a sink without it costs a silent
        connection no wake-ups.

        Parameters
        ----------
        position: :class:`int`
            The recording timeline's current sample position (48 kHz). Frames still in the
            pipeline (jitter buffer, decoders) may arrive later with smaller positions.
        """

    def on_stop(self, position: int) -> None:
        """Called once when listening ends, before :meth:`cleanup`.

        Parameters
        ----------
        position: :class:`int`
            The recording timeline's final sample position (48 kHz): where every track of
            the recording ends.
        """

    def cleanup(self) -> None:
        """Called once after listening ended; release resources (close files...)."""


class AudioHandlingSink(AudioSink):
    """A sink that receives each user's frames through :meth:`on_valid_audio` exactly once, in order.

    The pipeline already delivers frames in sequence order with losses concealed; this class
    guards that promise for user code (a frame whose sequence number does not advance for its
    SSRC is dropped and counted in :attr:`invalid_frames`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_seq: dict[int, int] = {}
        #: Frames refused because their sequence number did not advance.
        self.invalid_frames = 0

    def on_audio(self, frame: AudioFrame) -> None:
        last = self._last_seq.get(frame.ssrc)
        if last is not None and seq_diff(frame.sequence, last) <= 0:
            self.invalid_frames += 1
            return
        self._last_seq[frame.ssrc] = frame.sequence
        self.on_valid_audio(frame)

    def on_valid_audio(self, frame: AudioFrame) -> None:
        """Called once per frame per user, in order; override this."""


class FanOutSink(AudioSink):
    """Hands everything to several sinks; one failing sink does not stop the others.

    Parameters
    ----------
    sinks: :class:`AudioSink`
        The sinks to feed, in call order.
    """

    def __init__(self, *sinks: AudioSink) -> None:
        super().__init__()
        for s in sinks:
            if not isinstance(s, AudioSink):
                raise TypeError(f"FanOutSink takes AudioSink instances, got {type(s).__name__}")
        self.sinks: tuple[AudioSink, ...] = sinks
        #: Exceptions raised by child sinks, counted per sink index.
        self.errors: list[int] = [0] * len(sinks)
        self._error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        """The first error a child sink reported (a full disk...), so ``after`` receives it."""
        if self._error is not None:
            return self._error
        return next((e for e in (getattr(s, "error", None) for s in self.sinks) if e is not None), None)

    @error.setter
    def error(self, value: BaseException | None) -> None:
        self._error = value

    def _each(self, method: str, *args: object) -> None:
        for i, s in enumerate(self.sinks):
            try:
                getattr(s, method)(*args)
            except Exception:
                self.errors[i] += 1
                if self.errors[i] <= 5 or self.errors[i] % 1000 == 0:
                    _log.exception("sink %r raised in %s (%d errors so far)", s, method, self.errors[i])

    def on_audio(self, frame: AudioFrame) -> None:
        self._each("on_audio", frame)

    def on_rtcp(self, packet: RTCPPacket) -> None:
        self._each("on_rtcp", packet)

    def on_tick(self, position: int) -> None:
        self._each("on_tick", position)

    def on_stop(self, position: int) -> None:
        self._each("on_stop", position)

    def cleanup(self) -> None:
        self._each("cleanup")

    def __iter__(self) -> Iterable[AudioSink]:
        return iter(self.sinks)
