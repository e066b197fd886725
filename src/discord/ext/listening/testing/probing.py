"""Bandwidth probing of simulated webrtc clients: when bursts of padding-only RTP packets go out.

libwebrtc probes the available bandwidth by sending bursts of RTP packets that carry nothing
but padding (its ``GeneratePadding``) on the audio SSRC: 50 or more packets within about
100 ms, payload type 120, the P bit set, the payload made only of padding (last byte = how
many), consecutive sequence numbers taken from the media stream's own numbering and the
timestamp of the last media packet repeated. Receivers meet them on Discord (Discord.Net
#3262/#3263, dysnomia #230); they are not audio, not losses and not time.

This module decides *when* a member probes; :class:`.speech.RTPSender` numbers the packets
(a burst uses up sequence numbers) and records them as :class:`.speech.PaddingBurst`.
"""

from __future__ import annotations

import logging
import random
from typing import Final

__all__ = ("DEFAULT_BURST_SIZE", "PROBE_PADDING", "ProbeSchedule", "check_burst_size")

_log = logging.getLogger(__name__)

#: Padding bytes in each probe packet: libwebrtc caps one packet's padding at 224 bytes
#: (RFC 3550 allows 255; 224 keeps SRTP's 32-byte alignment).
PROBE_PADDING: Final = 224
#: Packets in one burst by default (real bursts have 50 or more).
DEFAULT_BURST_SIZE: Final = 50
_MAX_BURST_SIZE: Final = 1000


def check_burst_size(count: int) -> int:
    """Return ``count`` if it is a valid number of packets for one burst (1..1000).

    Raises
    ------
    ValueError
        It is not.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_BURST_SIZE:
        raise ValueError(f"a padding burst has 1..{_MAX_BURST_SIZE} packets, got {count!r}")
    return count


class ProbeSchedule:
    """When one client sends its padding bursts, counted in seconds of its talk.

    The gaps between bursts are drawn uniformly from ``0.5 .. 1.5 x mean_interval`` seconds
    of talk (audio frames sent; pauses do not count), so no stretch of talk longer than
    ``1.5 x mean_interval`` goes without a burst, and the first comes after some talk.

    Parameters
    ----------
    mean_interval: :class:`float`
        Mean seconds of talk between two bursts (> 0).
    size: :class:`int`
        Packets in each burst (1..1000).
    rng: Union[:class:`random.Random`, :class:`int`, None]
        Source of the gaps (a seed or a generator), so runs are repeatable.
    """

    def __init__(
        self, mean_interval: float, size: int = DEFAULT_BURST_SIZE, rng: random.Random | int | None = None
    ) -> None:
        if isinstance(mean_interval, bool) or not isinstance(mean_interval, (int, float)) or not mean_interval > 0:
            raise ValueError(f"mean_interval must be positive seconds of talk, got {mean_interval!r}")
        self.mean_interval = float(mean_interval)
        self.size = check_burst_size(size)
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._talk = 0.0  # seconds of talk so far
        self._next = self._gap()  # talk time of the next burst

    def __repr__(self) -> str:
        return f"<ProbeSchedule every ~{self.mean_interval:g}s of talk, {self.size} packets, next at {self._next:.2f}s>"

    def _gap(self) -> float:
        return self.mean_interval * self._rng.uniform(0.5, 1.5)

    def bursts(self, audio_frames: int, frame_duration: float) -> dict[int, int]:
        """Plan the bursts of a spurt of ``audio_frames`` frames and advance the talk clock.

        Returns
        -------
        dict[:class:`int`, :class:`int`]
            Frame index -> packets: the burst goes out right before that frame. Never index
            0: a burst follows at least one audio packet of the spurt (its timestamp repeats
            that packet's).
        """
        out: dict[int, int] = {}
        end = self._talk + audio_frames * frame_duration
        while self._next < end:
            index = max(1, int((self._next - self._talk) / frame_duration))
            if index < audio_frames:  # a one-frame spurt has no room: the burst waits
                out[index] = self.size
                self._next += self._gap()
            else:
                self._next = end
                break
        self._talk = end
        return out
