"""Simulated voice senders, sans-I/O: talk spurts -> Opus RTP frames, with a record of what was sent.

An :class:`RTPSender` plays one member's client. Given PCM and the time a talk spurt starts, it
returns the frames that client would send (20 ms apart), numbered the way the real client
numbers them, and remembers everything so a test can compare it with what a receiver made of it.
No sockets, no clock reads: the I/O shell (``media.py``) decides when to put frames on the wire
and how to encrypt them (:meth:`OutgoingFrame.to_packet` / :func:`build_rtp_packet` help).

Two real sender behaviours matter to a receiver (:class:`SenderClock`):

* **webrtc** (Discord's desktop, web and mobile clients): the RTP timestamp follows the capture
  clock, so after a 1 s pause the next spurt's timestamp is ~48000 higher than where the last
  one stopped. The marker bit flags the first packet of a spurt; an RFC 6464 audio level rides
  in a header extension.
* **discordpy** (bots: ``VoiceClient.send_audio_packet``): sequence and timestamp both advance
  only per packet sent (``+1`` / ``+960``), so a pause leaves no trace in the timestamps and
  only arrival times reveal it. No marker bit, no header extension.

Both send five Opus silence frames (:data:`..opus.SILENCE_FRAME`) when a spurt ends.

webrtc clients also probe bandwidth with bursts of padding-only packets on the audio SSRC
(:class:`PaddingBurst`, planned by :class:`.probing.ProbeSchedule` or asked for explicitly):
they use up sequence numbers between two audio frames.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

from ..opus import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, SILENCE_FRAME, OpusEncoder
from ..rtp import build_sender_report, unix_to_ntp
from .audio import AudioInput, load_pcm
from .probing import PaddingBurst, ProbeSchedule, build_rtp_packet, check_burst_size

if TYPE_CHECKING:
    from ..transport import TransportCipher

__all__ = (
    "FRAME_DURATION",
    "SILENCE_FRAMES",
    "OutgoingFrame",
    "PaddingBurst",
    "RTPSender",
    "SenderClock",
    "SentRecord",
    "SpurtRecord",
    "audio_level",
    "build_rtp_packet",
)

_log = logging.getLogger(__name__)

#: Seconds of audio per frame (and between two frames sent in real time).
FRAME_DURATION: Final = FRAME_SAMPLES / SAMPLE_RATE
#: How many :data:`SILENCE_FRAME` packets a client sends when it stops talking.
SILENCE_FRAMES: Final = 5

_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32
_ZERO_FRAME: Final = bytes(FRAME_BYTES)  # what a silence frame decodes to; shared, immutable
# A frame whose mean square is below full scale * 10^(-127/10) is "silence" (127 -dBov).
_FULL_SCALE_SQUARED: Final = 32768.0 * 32768.0


class SenderClock(enum.Enum):
    """How a sender numbers its packets across pauses (see the module docstring)."""

    #: RTP timestamp follows wall time (advances across pauses); marker + audio level extension.
    webrtc = "webrtc"
    #: RTP timestamp advances 960 per packet sent, pauses leave no gap; no marker, no extension.
    discordpy = "discordpy"

    @property
    def sets_marker(self) -> bool:
        """Whether this kind of client sets the RTP marker bit on the first packet of a spurt."""
        # discord.py builds every header as 0x80 0x78 (voice_client._get_voice_packet).
        return self is SenderClock.webrtc

    @property
    def sends_audio_level(self) -> bool:
        """Whether this kind of client sends the RFC 6464 audio-level header extension."""
        return self is SenderClock.webrtc


def audio_level(pcm: bytes) -> int:
    """RFC 6464 audio level of s16le PCM, in -dBov: 0 (full scale) .. 127 (silence).

    Computed the way WebRTC's ``RmsLevel`` does: the mean square over every sample of the frame
    (both channels) relative to a full-scale square wave (32768^2), in dB, negated, rounded
    and clamped to 0..127.
    """
    if not pcm:
        return 127
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    mean_square = float(np.dot(x, x)) / x.size
    if mean_square <= 0.0:
        return 127
    level = -10.0 * math.log10(mean_square / _FULL_SCALE_SQUARED)
    return int(min(127, max(0, round(level))))


@dataclass(frozen=True, slots=True)
class OutgoingFrame:
    """One RTP packet a simulated client sends, before encryption.

    Attributes
    ----------
    send_time: :class:`float`
        When a real-time client would send it: the spurt's start + 20 ms x its index.
    ssrc, sequence, timestamp: :class:`int`
        RTP fields (16-bit and 32-bit values, already wrapped).
    opus: :class:`bytes`
        The Opus payload (:data:`SILENCE_FRAME` for silence frames), before DAVE.
    marker: :class:`bool`
        RTP marker bit.
    audio_level: :class:`int`
        RFC 6464 level of ``pcm`` in -dBov (127 for silence frames).
    pcm: :class:`bytes`
        The 3840 bytes of 48 kHz stereo s16le PCM this frame encodes (the last audio frame of
        a spurt is zero-padded; silence frames carry zeros, what they decode to).
    silence: :class:`bool`
        A trailing silence frame, not audio of the spurt.
    header_extension: :class:`bool`
        Whether the client puts the audio-level extension on the wire (webrtc clients do).
    """

    send_time: float
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes
    marker: bool
    audio_level: int
    pcm: bytes = field(repr=False)
    silence: bool = False
    header_extension: bool = True

    def to_packet(
        self, cipher: TransportCipher, counter: int, *, payload: bytes | None = None, padding: int = 0
    ) -> bytes:
        """Encrypt this frame as the sender's client would put it on the wire.

        ``payload`` replaces :attr:`opus`, e.g. with the DAVE frame from
        ``davey.DaveSession.encrypt_opus(frame.opus)`` (silence frames are never DAVE-encrypted).
        """
        return build_rtp_packet(
            cipher,
            counter,
            ssrc=self.ssrc,
            sequence=self.sequence,
            timestamp=self.timestamp,
            payload=self.opus if payload is None else payload,
            marker=self.marker,
            audio_level=self.audio_level if self.header_extension else None,
            voice=not self.silence,
            padding=padding,
        )


@dataclass(slots=True)
class SpurtRecord:
    """Everything one talk spurt sent.

    Attributes
    ----------
    start: :class:`float`
        Send time of its first frame (the caller's clock).
    pcm: :class:`bytes`
        The spurt's audio as given (48 kHz stereo s16le, before the last frame's padding).
    frames: list[:class:`OutgoingFrame`]
        Audio frames, then the trailing silence frames, in send order.
    padding_bursts: list[:class:`PaddingBurst`]
        Bursts of padding-only packets sent between its frames (their sequence numbers are
        not in :attr:`frames`).
    """

    start: float
    pcm: bytes = field(repr=False)
    frames: list[OutgoingFrame] = field(default_factory=list, repr=False)
    padding_bursts: list[PaddingBurst] = field(default_factory=list)

    @property
    def padding_sequences(self) -> set[int]:
        """Sequence numbers of this spurt's padding-only packets."""
        return {seq for burst in self.padding_bursts for seq in burst.sequences}

    @property
    def audio_frames(self) -> list[OutgoingFrame]:
        """The frames carrying the spurt's audio (silence frames excluded)."""
        return [f for f in self.frames if not f.silence]

    @property
    def silence_frames(self) -> list[OutgoingFrame]:
        """The trailing Opus silence frames."""
        return [f for f in self.frames if f.silence]

    @property
    def padded_pcm(self) -> bytes:
        """The audio frames' PCM joined: :attr:`pcm` zero-padded to whole 20 ms frames."""
        return b"".join(f.pcm for f in self.frames if not f.silence)

    @property
    def samples(self) -> int:
        """Length of :attr:`pcm` in samples per channel."""
        return len(self.pcm) // 4

    @property
    def end(self) -> float:
        """When the frame after the last one (silence included) would be sent."""
        return self.start + len(self.frames) * FRAME_DURATION

    @property
    def first_sequence(self) -> int:
        return self.frames[0].sequence

    @property
    def first_timestamp(self) -> int:
        return self.frames[0].timestamp


@dataclass(slots=True)
class SentRecord:
    """What one :class:`RTPSender` sent, spurt by spurt, to compare with what a receiver got."""

    ssrc: int
    clock: SenderClock
    spurts: list[SpurtRecord] = field(default_factory=list)

    @property
    def frames(self) -> list[OutgoingFrame]:
        """Every frame sent, in order."""
        return [f for s in self.spurts for f in s.frames]

    @property
    def audio_frames(self) -> list[OutgoingFrame]:
        """Every frame that carried audio (silence frames excluded), in order."""
        return [f for s in self.spurts for f in s.frames if not f.silence]

    @property
    def padding_bursts(self) -> list[PaddingBurst]:
        """Every burst of padding-only packets, in order."""
        return [b for s in self.spurts for b in s.padding_bursts]

    @property
    def padding_sequences(self) -> set[int]:
        """Sequence numbers that carried padding only (not frames)."""
        return {seq for s in self.spurts for seq in s.padding_sequences}

    @property
    def packet_count(self) -> int:
        """RTP packets sent: frames and padding-only packets (RTCP's definition)."""
        return sum(len(s.frames) + sum(b.count for b in s.padding_bursts) for s in self.spurts)

    @property
    def octet_count(self) -> int:
        """Payload bytes sent (RTCP's definition: headers excluded)."""
        return sum(len(f.opus) for s in self.spurts for f in s.frames)


class RTPSender:
    """One simulated client's outgoing audio stream.

    Parameters
    ----------
    ssrc: :class:`int`
        The stream's SSRC (what READY / op 5 / op 12 announced for the member).
    sequence: Optional[:class:`int`]
        Sequence number of the first packet; random when ``None``. Pass e.g. 65530 to cross
        the 16-bit wrap within a few packets.
    timestamp: Optional[:class:`int`]
        RTP timestamp of the first packet; random when ``None`` (e.g. ``2**32 - 1000``
        crosses the 32-bit wrap on the second packet).
    clock: :class:`SenderClock`
        Which real sender to imitate.
    rng: Union[:class:`random.Random`, :class:`int`, None]
        Source of the random initial values (a seed or a generator), so runs are repeatable.
    marker: Optional[:class:`bool`]
        Force the marker bit on the first packet of a spurt on (``True``) or off (``False``);
        ``None`` follows the clock (:attr:`SenderClock.sets_marker`).
    bitrate, expected_loss: :class:`int`
        Passed to :class:`..opus.OpusEncoder` (FEC is always on, as in Discord's clients).
    silence_frames: :class:`int`
        Silence frames appended to every spurt (5 by default, as real clients do; 0 imitates
        a client that vanishes mid-sentence).
    checked_add_wrap: :class:`bool`
        Imitate discord.py's ``VoiceClient.checked_add`` exactly: when ``timestamp + 960`` would
        exceed ``2**32 - 1`` it becomes 0 instead of wrapping modulo ``2**32`` (the sequence
        number's reset to 0 after 65535 is a correct wrap either way). Off by default.
    probing: Optional[:class:`.probing.ProbeSchedule`]
        When this client sends bursts of padding-only packets by itself (libwebrtc's
        bandwidth probing); ``None``: only the bursts :meth:`talk` is asked for.

    Notes
    -----
    Real discord.py starts at sequence 1 and timestamp 0; pass them to imitate it exactly.
    One Opus encoder serves the whole stream, like a client's, so the encoder state carries
    over from spurt to spurt.
    """

    def __init__(
        self,
        ssrc: int,
        *,
        sequence: int | None = None,
        timestamp: int | None = None,
        clock: SenderClock = SenderClock.webrtc,
        rng: random.Random | int | None = None,
        marker: bool | None = None,
        bitrate: int = 64000,
        expected_loss: int = 10,
        silence_frames: int = SILENCE_FRAMES,
        checked_add_wrap: bool = False,
        probing: ProbeSchedule | None = None,
    ) -> None:
        if not 0 <= ssrc < _TS_MOD:
            raise ValueError(f"ssrc must fit 32 bits, got {ssrc!r}")
        if sequence is not None and not 0 <= sequence < _SEQ_MOD:
            raise ValueError(f"sequence must be 0..65535, got {sequence!r}")
        if timestamp is not None and not 0 <= timestamp < _TS_MOD:
            raise ValueError(f"timestamp must be 0..2**32-1, got {timestamp!r}")
        if silence_frames < 0:
            raise ValueError(f"silence_frames must be >= 0, got {silence_frames!r}")
        if not isinstance(clock, SenderClock):
            clock = SenderClock(clock)
        gen = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.ssrc = ssrc
        self.clock = clock
        self.marker = clock.sets_marker if marker is None else marker
        self.silence_frames = silence_frames
        self.checked_add_wrap = checked_add_wrap
        self.probing = probing
        # Draw both even when given, so passing one does not change the other's random value.
        seq0, ts0 = gen.randrange(_SEQ_MOD), gen.randrange(_TS_MOD)
        self._sequence = seq0 if sequence is None else sequence  # next packet's
        self._timestamp = ts0 if timestamp is None else timestamp  # next packet's (discordpy)
        self._origin: tuple[float, int] | None = None  # (first spurt start, its timestamp): webrtc
        self._next_free = -math.inf  # earliest start for the next spurt
        self._encoder = OpusEncoder(bitrate, fec=True, expected_loss=expected_loss)
        self.record = SentRecord(ssrc, clock)

    def __repr__(self) -> str:
        return f"<RTPSender ssrc={self.ssrc} clock={self.clock.value} next_seq={self._sequence} spurts={len(self.record.spurts)}>"

    @property
    def next_sequence(self) -> int:
        """Sequence number the next packet will carry."""
        return self._sequence

    def timestamp_at(self, time: float) -> int:
        """The RTP timestamp a spurt starting at ``time`` would get (before sending it).

        webrtc: the capture clock, ``origin timestamp + 48000 * (time - origin time)``
        (rounded to a sample). discordpy: the next packet's timestamp, whatever the time.
        """
        if self.clock is SenderClock.discordpy or self._origin is None:
            return self._timestamp
        t0, ts0 = self._origin
        return (ts0 + round((time - t0) * SAMPLE_RATE)) % _TS_MOD

    def talk(
        self, audio: AudioInput, start: float, *, padding_bursts: Mapping[int, int] | None = None
    ) -> list[OutgoingFrame]:
        """Produce the packets of one talk spurt starting at ``start``.

        Parameters
        ----------
        audio:
            The spurt's audio: anything :func:`.audio.load_pcm` accepts (48 kHz stereo s16le
            bytes, a WAV path, a numpy array). Must not be empty.
        start: :class:`float`
            Send time of the first packet, on the caller's clock (seconds). Must not be
            earlier than the end of the previous spurt (its silence frames included).
        padding_bursts: Optional[Mapping[:class:`int`, :class:`int`]]
            Frame index (1..frames-1) -> packets: a burst of padding-only packets right before
            that frame, on top of those :attr:`probing` plans. Recorded in the spurt's
            :attr:`SpurtRecord.padding_bursts`; they use up sequence numbers.

        Returns
        -------
        list[:class:`OutgoingFrame`]
            ``ceil(len / 20 ms)`` audio frames (the last zero-padded) followed by
            :attr:`silence_frames` silence frames, ``send_time = start + 0.02 * i``.
        """
        pcm = load_pcm(audio)
        if not pcm:
            raise ValueError("a talk spurt needs at least one sample of audio")
        if not math.isfinite(start):
            raise ValueError(f"start must be a finite time, got {start!r}")
        if start < self._next_free - 1e-9:
            raise ValueError(
                f"spurt starting at {start:.6f} overlaps the previous one, which ends at {self._next_free:.6f}"
            )
        if self.clock is SenderClock.webrtc:
            if self._origin is None:
                self._origin = (start, self._timestamp)
            timestamp = self.timestamp_at(start)
        else:
            timestamp = self._timestamp
        sequence = self._sequence

        n_audio = -(-len(pcm) // FRAME_BYTES)
        n_frames = n_audio + self.silence_frames
        asked = dict(padding_bursts or {})
        for index, count in asked.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index < n_frames:
                raise ValueError(f"a padding burst goes before frame 1..{n_frames - 1} of this spurt, got {index!r}")
            check_burst_size(count)
        planned = self.probing.bursts(n_audio, FRAME_DURATION) if self.probing is not None else {}
        bursts_at = {**planned, **asked}
        padded = pcm + bytes(n_audio * FRAME_BYTES - len(pcm))
        frames: list[OutgoingFrame] = []
        bursts: list[PaddingBurst] = []
        for i in range(n_frames):
            if i in bursts_at:
                previous = frames[-1]
                burst = PaddingBurst(
                    before_frame=i,
                    ssrc=self.ssrc,
                    first_sequence=sequence,
                    count=bursts_at[i],
                    timestamp=previous.timestamp,
                    send_time=previous.send_time + FRAME_DURATION / 4,
                    header_extension=self.clock.sends_audio_level,
                )
                bursts.append(burst)
                sequence = (sequence + burst.count) % _SEQ_MOD
            silence = i >= n_audio
            chunk = _ZERO_FRAME if silence else padded[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
            frames.append(
                OutgoingFrame(
                    send_time=start + i * FRAME_DURATION,
                    ssrc=self.ssrc,
                    sequence=sequence,
                    timestamp=timestamp,
                    opus=SILENCE_FRAME if silence else self._encoder.encode(chunk),
                    marker=self.marker and i == 0,
                    audio_level=127 if silence else audio_level(chunk),
                    pcm=chunk,
                    silence=silence,
                    header_extension=self.clock.sends_audio_level,
                )
            )
            sequence = (sequence + 1) % _SEQ_MOD
            timestamp = self._advance(timestamp)

        self._sequence, self._timestamp = sequence, timestamp
        self._next_free = start + len(frames) * FRAME_DURATION
        self.record.spurts.append(SpurtRecord(start, pcm, frames, bursts))
        _log.debug(
            "ssrc %d: spurt at %.3f, %d audio + %d silence frames, seq %d, ts %d",
            self.ssrc,
            start,
            n_audio,
            self.silence_frames,
            frames[0].sequence,
            frames[0].timestamp,
        )
        return frames

    def _advance(self, timestamp: int) -> int:
        if self.checked_add_wrap and timestamp + FRAME_SAMPLES > _TS_MOD - 1:
            return 0  # discord.py: `if val + value > limit: setattr(self, attr, 0)`
        return (timestamp + FRAME_SAMPLES) % _TS_MOD

    def sender_report(self, now: float) -> bytes:
        """A clear-text RTCP sender report as a webrtc client would send it at ``now``.

        Maps ``now`` (as NTP wall time, the caller's clock read as Unix time) to the RTP
        timestamp of the capture clock, with the packet and octet counts so far. The shell
        encrypts it with ``cipher.encrypt(sr[:8], sr[8:], counter)``.

        Raises
        ------
        ValueError
            The clock is discordpy (discord.py sends no RTCP), or nothing was sent yet (a
            webrtc client's capture clock starts with its first spurt here).
        """
        if self.clock is not SenderClock.webrtc:
            raise ValueError("discord.py senders send no RTCP")
        if self._origin is None:
            raise ValueError("no spurt sent yet: the capture clock has no origin")
        rec = self.record
        return build_sender_report(
            self.ssrc, unix_to_ntp(now), self.timestamp_at(now), rec.packet_count, rec.octet_count
        )
