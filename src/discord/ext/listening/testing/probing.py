"""Bandwidth probing of simulated webrtc clients: when bursts of padding-only RTP packets go out.

libwebrtc probes the available bandwidth by sending bursts of RTP packets that carry nothing
but padding (its ``GeneratePadding``) on the audio SSRC: 50 or more packets within about
100 ms, payload type 120, the P bit set, the payload made only of padding (last byte = how
many), consecutive sequence numbers taken from the media stream's own numbering and the
timestamp of the last media packet repeated. Receivers meet them on Discord (Discord.Net
#3262/#3263, dysnomia #230); they are not audio, not losses and not time.

This module decides *when* a member probes; :class:`.speech.RTPSender` numbers the packets
(a burst uses up sequence numbers) and records them as :class:`PaddingBurst`, which builds
their packets with :func:`build_rtp_packet` (the RTP packet builder every simulated client uses).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..opus import FRAME_SAMPLES, SAMPLE_RATE
from ..rtp import OPUS_PAYLOAD_TYPE, audio_level_extension, build_rtp_header

if TYPE_CHECKING:
    from ..transport import TransportCipher

__all__ = (
    "DEFAULT_BURST_SIZE",
    "PROBE_PADDING",
    "PaddingBurst",
    "ProbeSchedule",
    "build_rtp_packet",
    "check_burst_size",
)

_log = logging.getLogger(__name__)

#: Padding bytes in each probe packet: libwebrtc caps one packet's padding at 224 bytes
#: (RFC 3550 allows 255; 224 keeps SRTP's 32-byte alignment).
PROBE_PADDING: Final = 224
#: Packets in one burst by default (real bursts have 50 or more).
DEFAULT_BURST_SIZE: Final = 50
_MAX_BURST_SIZE: Final = 1000
_SEQ_MOD: Final = 1 << 16


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


def build_rtp_packet(
    cipher: TransportCipher,
    counter: int,
    *,
    ssrc: int,
    sequence: int,
    timestamp: int,
    payload: bytes,
    payload_type: int = OPUS_PAYLOAD_TYPE,
    marker: bool = False,
    audio_level: int | None = None,
    voice: bool = True,
    padding: int = 0,
) -> bytes:
    """Build and transport-encrypt one RTP packet the way Discord clients lay it out.

    Parameters
    ----------
    cipher: :class:`..transport.TransportCipher`
        The connection's cipher (``*_rtpsize`` layout: header + extension preamble in clear).
    counter: :class:`int`
        The 32-bit nonce counter; the caller keeps one per key and never reuses a value.
    payload: :class:`bytes`
        Opus packet, DAVE frame (already end-to-end encrypted) or anything else to carry.
    audio_level: Optional[:class:`int`]
        When given, a ``0xBEDE`` extension carrying this RFC 6464 level (and the ``voice``
        flag) goes in front of the payload, encrypted with it. ``None``: no extension (X=0).
    padding: :class:`int`
        0, or 1..255 bytes of RTP padding (P bit set, last byte = count) after the payload,
        which receivers must strip before looking at the payload.
    """
    if not 0 <= padding <= 255:
        raise ValueError(f"padding must be 0..255 bytes, got {padding!r}")
    ext = audio_level_extension(audio_level, voice=voice) if audio_level is not None else None
    header = build_rtp_header(
        sequence,
        timestamp,
        ssrc,
        payload_type=payload_type,
        marker=marker,
        padding=padding > 0,
        extension_length=len(ext) if ext is not None else None,
    )
    pad = bytes(padding - 1) + bytes((padding,)) if padding else b""
    return cipher.encrypt(header, (ext or b"") + payload + pad, counter)


@dataclass(frozen=True, slots=True)
class PaddingBurst:
    """A burst of padding-only RTP packets (bandwidth probing) a client sent in a spurt.

    Attributes
    ----------
    before_frame: :class:`int`
        Index in the spurt's :attr:`SpurtRecord.frames` of the frame the burst precedes.
    ssrc: :class:`int`
        The audio SSRC it was sent on.
    first_sequence: :class:`int`
        Sequence number of its first packet; the others follow one by one (wrapping at
        2^16), and the frame after the burst carries ``first_sequence + count``.
    count: :class:`int`
        Packets in the burst.
    timestamp: :class:`int`
        RTP timestamp of every packet: the one of the packet before the burst, repeated.
    send_time: :class:`float`
        When its first packet is sent (the caller's clock); the others follow within
        half a frame (:attr:`send_times`).
    padding: :class:`int`
        Padding bytes in each packet: the whole payload (last byte = this count).
    header_extension: :class:`bool`
        Whether its packets carry the client's ``0xBEDE`` extension (before the padding, in
        the encrypted part), as the client's audio packets do.
    """

    before_frame: int
    ssrc: int
    first_sequence: int
    count: int
    timestamp: int
    send_time: float
    padding: int = PROBE_PADDING
    header_extension: bool = True

    @property
    def sequences(self) -> list[int]:
        """The sequence numbers of its packets, in order."""
        return [(self.first_sequence + i) % _SEQ_MOD for i in range(self.count)]

    @property
    def send_times(self) -> list[float]:
        """When each packet is sent: spread over half a frame from :attr:`send_time`."""
        step = FRAME_SAMPLES / SAMPLE_RATE / 2 / self.count
        return [self.send_time + i * step for i in range(self.count)]

    def to_packet(self, index: int, cipher: TransportCipher, counter: int) -> bytes:
        """Transport-encrypt packet ``index`` of the burst (never DAVE: it is not a media frame).

        Payload type 120 and the P bit in the clear header; the encrypted part is the
        extension body (audio level 127, no voice) when the client sends one, then
        :attr:`padding` bytes of padding and nothing else.
        """
        if not 0 <= index < self.count:
            raise ValueError(f"index must be 0..{self.count - 1}, got {index!r}")
        return build_rtp_packet(
            cipher,
            counter,
            ssrc=self.ssrc,
            sequence=(self.first_sequence + index) % _SEQ_MOD,
            timestamp=self.timestamp,
            payload=b"",
            audio_level=127 if self.header_extension else None,
            voice=False,
            padding=self.padding,
        )
