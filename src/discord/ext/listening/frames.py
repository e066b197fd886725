"""What flows between the stages: packets released by the receiver, frames sinks receive.

:class:`ReceivedPacket` is what the receive path hands on (ordered, decrypted Opus, placed
on the recording timeline); :class:`AudioFrame` is one 20 ms frame of one user's audio as
a sink gets it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .opus import FRAME_SAMPLES, SAMPLE_RATE

if TYPE_CHECKING:
    import discord

__all__ = ("AudioFrame", "FrameKind", "ReceivedPacket", "SpeakingChange")


class FrameKind(enum.Enum):
    """How a frame's audio came to be."""

    #: Decoded from the packet that carried it.
    decoded = "decoded"
    #: Recovered from the in-band FEC data of the next packet (close to the original).
    fec = "fec"
    #: Synthesized by libopus packet loss concealment (a guess continuing the last audio).
    plc = "plc"
    #: A lost frame past the concealment limit: digital silence.
    silence = "silence"
    #: The Opus payload itself (``listen(decode=False)``); ``audio`` is not PCM.
    opus = "opus"


@dataclass(slots=True, eq=False)
class AudioFrame:
    """One 20 ms frame of one user's audio.

    Attributes
    ----------
    user: Union[:class:`discord.Member`, :class:`discord.Object`, None]
        Who spoke: the cached member when there is one, else a :class:`discord.Object` with
        the user id; ``None`` only if the SSRC was never mapped to a user.
    ssrc: :class:`int`
        The RTP synchronization source the frame came from (changes on reconnect).
    sequence: :class:`int`
        RTP sequence number (16-bit, wraps). Concealed frames carry the lost packet's number.
    timestamp: :class:`int`
        RTP timestamp (48 kHz, 32-bit, wraps).
    audio: :class:`bytes`
        3840 bytes of 48 kHz stereo s16le PCM, or the Opus packet when ``kind`` is
        :attr:`FrameKind.opus`.
    kind: :class:`FrameKind`
        Decoded, concealed (FEC / PLC / silence) or raw Opus.
    position: :class:`int`
        Sample offset (48 kHz, per channel) of the frame's first sample on the recording's
        timeline, where 0 is the moment ``listen`` started.
    arrival: :class:`float`
        ``time.monotonic()`` when the packet arrived (for concealed frames: when the loss was
        declared).
    audio_level: Optional[:class:`int`]
        The sender's RFC 6464 audio level in -dBov (0 loud .. 127 silent), when sent.
    """

    user: discord.Member | discord.Object | None
    ssrc: int
    sequence: int
    timestamp: int
    audio: bytes
    kind: FrameKind
    position: int
    arrival: float
    audio_level: int | None = None

    @property
    def user_id(self) -> int | None:
        """The speaker's user id, or ``None`` if unknown."""
        return None if self.user is None else self.user.id

    @property
    def concealed(self) -> bool:
        """Whether the audio was not decoded from its own packet (FEC, PLC or silence)."""
        return self.kind in (FrameKind.fec, FrameKind.plc, FrameKind.silence)

    @property
    def time(self) -> float:
        """Seconds from the start of the recording to the frame's first sample."""
        return self.position / SAMPLE_RATE

    @property
    def samples(self) -> int:
        """Samples per channel in this frame (960 for PCM frames)."""
        return len(self.audio) // 4 if self.kind is not FrameKind.opus else FRAME_SAMPLES

    def __repr__(self) -> str:
        return (
            f"<AudioFrame user={self.user_id} ssrc={self.ssrc} seq={self.sequence} kind={self.kind.value} "
            f"t={self.time:.3f}s bytes={len(self.audio)}>"
        )


@dataclass(slots=True)
class ReceivedPacket:
    """An authenticated, decrypted Opus packet released in sequence order for its SSRC.

    ``position`` is the sample offset of the packet's first sample on the recording timeline;
    ``lost_positions`` holds one position per frame missing right before this packet (oldest
    first), where the decoder's concealment of them belongs.
    """

    ssrc: int
    user_id: int | None
    sequence: int
    timestamp: int
    opus: bytes
    lost_positions: tuple[int, ...]
    position: int
    arrival: float
    audio_level: int | None
    new_stream: bool = False

    @property
    def lost_before(self) -> int:
        """How many frames are missing right before this packet."""
        return len(self.lost_positions)


@dataclass(slots=True)
class SpeakingChange:
    """A user started or stopped sending audio."""

    ssrc: int
    user_id: int | None
    speaking: bool
