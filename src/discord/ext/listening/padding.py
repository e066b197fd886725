"""Padding-only RTP packets in a stream of audio, sans-I/O: sequence numbers without media.

Clients probe bandwidth with bursts of packets that carry nothing but RTP padding (libwebrtc
sends 50 and more within ~100 ms, in the middle of speech): consecutive sequence numbers,
the timestamp of the last audio packet repeated. They go through the jitter buffer like
audio, so that their sequence numbers are not taken for losses, and are then consumed here:
no frame, no place on the timeline, no concealment. Whatever sequence numbers went missing
around a burst, only the audio frames its neighbours' RTP timestamps say are missing count
as lost (a probe lost on the way is no loss of audio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .opus import FRAME_SAMPLES
from .seqmath import ts_diff

__all__ = ("PaddingRun",)


@dataclass(slots=True)
class PaddingRun:
    """The padding-only packets one SSRC released since its last audio packet.

    Attributes
    ----------
    count: :class:`int`
        Padding-only packets since the last audio packet.
    missing: :class:`int`
        Sequence numbers missing among them (audio or padding, nobody can tell yet).
    new_stream: :class:`bool`
        One of them started the stream (the next audio packet starts it instead).
    last_timestamp: Optional[:class:`int`]
        RTP timestamp of the last audio packet (what the padding repeats).
    """

    count: int = 0
    missing: int = 0
    new_stream: bool = False
    last_timestamp: int | None = None

    def absorb(self, released: Any) -> None:
        """A released padding-only packet (a ``reorder.Released``): nothing comes out of it."""
        self.count += 1
        self.missing += released.lost_before
        self.new_stream |= released.new_stream

    def audio_after(self, released: Any) -> Any:
        """The first audio packet after probes (``count`` > 0): returned with ``lost_before``
        counting only missing *audio* frames. The caller records every audio packet's
        timestamp in :attr:`last_timestamp` (the hot path, without a call)."""
        missing = self.missing + released.lost_before
        new_stream = self.new_stream or released.new_stream
        self.count = self.missing = 0
        self.new_stream = False
        lost = 0
        if missing and not new_stream and self.last_timestamp is not None:
            between = ts_diff(released.timestamp, self.last_timestamp) // FRAME_SAMPLES - 1
            lost = max(0, min(missing, between))
        return released._replace(lost_before=lost, new_stream=new_stream)
