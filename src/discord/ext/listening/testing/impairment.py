"""Network impairment and hostile packets for the voice server emulator, sans-I/O.

:class:`Impairment` decides, per packet, whether and when it arrives: random and bursty loss,
reordering, duplication, jitter and constant delay, all drawn from one seeded generator so a
failing test can be replayed exactly. It never sleeps or reads a clock: :meth:`Impairment.apply`
takes the send time and returns delivery times, and the I/O shell schedules them (or just
sorts by them when it runs faster than real time).

The ``*_packet`` / ``garbage_datagram`` / ``with_wrong_tag`` factories build the traffic a
receiver must survive without losing anything else: forged or corrupt datagrams, video, and
audio from SSRCs nobody announced.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from ..opus import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from .probing import build_rtp_packet
from .speech import audio_level

if TYPE_CHECKING:
    from ..transport import TransportCipher

__all__ = (
    "VIDEO_PAYLOAD_TYPE",
    "Impairment",
    "ImpairmentChain",
    "ImpairmentStats",
    "PacketImpairment",
    "garbage_datagram",
    "unknown_ssrc_packet",
    "video_packet",
    "with_wrong_tag",
)

_log = logging.getLogger(__name__)

_INTERVAL: Final = FRAME_SAMPLES / SAMPLE_RATE  # 20 ms: one Opus frame per packet
_TAG: Final = 16
_NONCE_SUFFIX: Final = 4
#: Default payload type of :func:`video_packet`: one of the dynamic types Discord uses for video.
#: Any value but 120 (Opus) is foreign to an audio receiver.
VIDEO_PAYLOAD_TYPE: Final = 103


@dataclass(frozen=True, slots=True)
class ImpairmentStats:
    """Counters of one impairment stage.

    Attributes
    ----------
    sent: :class:`int`
        Packets offered to :meth:`Impairment.apply`.
    dropped: :class:`int`
        Packets lost (random or burst loss).
    duplicated: :class:`int`
        Packets delivered twice.
    reordered: :class:`int`
        Packets held back behind the ones sent after them.
    delivered: :class:`int`
        Deliveries returned (``sent - dropped + duplicated``).
    """

    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delivered: int = 0

    @property
    def loss_rate(self) -> float:
        """``dropped / sent`` (0 when nothing was sent)."""
        return self.dropped / self.sent if self.sent else 0.0


class PacketImpairment(Protocol):
    """Anything the shell can run packets through: an :class:`Impairment` or a chain of them."""

    def apply(self, packet: bytes, send_time: float) -> list[tuple[float, bytes]]: ...


def _probability(name: str, value: float, *, allow_zero: bool = True) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0) or (not allow_zero and v == 0.0):
        bound = "(0, 1]" if not allow_zero else "[0, 1]"
        raise ValueError(f"{name} is a probability in {bound}, got {value!r}")
    return v


def _seconds(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} is a duration in seconds >= 0, got {value!r}")
    return v


class Impairment:
    """A seeded model of a bad network path, applied packet by packet.

    Parameters
    ----------
    loss: :class:`float`
        Probability that a packet is lost, independently of the others.
    burst_loss: Optional[tuple[:class:`float`, :class:`float`]]
        ``(p_good_to_bad, p_bad_to_good)`` of a Gilbert-Elliott two-state chain: every packet
        first steps the chain, then is lost if the chain is in the *bad* state (on top of
        ``loss``, which applies in both states). The chain starts good. Mean burst length is
        ``1 / p_bad_to_good`` packets and the long-run burst loss rate
        ``p_good_to_bad / (p_good_to_bad + p_bad_to_good)``; e.g. ``(0.01, 0.25)`` loses ~3.8 %
        in bursts of ~4 packets. ``p_bad_to_good`` must be > 0 (else the path dies for good).
    reorder: :class:`float`
        Probability that a packet is held back by ``k + 1/2`` packet intervals, ``k`` drawn
        uniformly from 1..3, so it arrives after the 1-3 packets sent after it (and, with no
        jitter, never at the same instant as one of them).
    duplicate: :class:`float`
        Probability that a packet arrives twice; the copy comes 0..1 interval after the original.
    jitter: :class:`float`
        Scale (seconds) of a random extra delay per packet: the absolute value of a normal
        variate with standard deviation ``jitter`` (half-normal: mean ~0.8 x ``jitter``, 99.7 %
        below 3 x ``jitter``). Never negative, so nothing arrives before it was sent. A jitter
        comparable to the packet interval (20 ms) reorders packets too; those are not counted
        in :attr:`ImpairmentStats.reordered`, which counts deliberate holds only.
    delay: :class:`float`
        Constant one-way delay (seconds) added to every delivery.
    seed: Optional[:class:`int`]
        Seed of the generator. ``None`` picks one at random and stores it in :attr:`seed`, so
        a failing run can always be replayed.
    interval: :class:`float`
        The sender's packet interval (seconds) that ``reorder`` and ``duplicate`` are measured
        in; 20 ms for Discord audio.

    Notes
    -----
    Every packet consumes the same number of random draws whatever happens to it, so with one
    seed the same packets are lost whether or not, say, jitter is switched on.

    To combine a global impairment (the server's uplink, shared by all members) with a
    per-member one, either call :meth:`apply` of one on each delivery of the other, or build
    ``Impairment.chain(global_, member)`` and apply that. Sharing one :class:`Impairment`
    instance between members makes its burst-loss state common to them (a congested link hits
    everyone at once); give each member its own copy (:meth:`with_seed`) for independent paths.
    """

    def __init__(
        self,
        loss: float = 0.0,
        burst_loss: tuple[float, float] | None = None,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        jitter: float = 0.0,
        delay: float = 0.0,
        seed: int | None = None,
        *,
        interval: float = _INTERVAL,
    ) -> None:
        self.loss = _probability("loss", loss)
        if burst_loss is not None:
            try:
                p, r = burst_loss
            except (TypeError, ValueError):
                raise ValueError(f"burst_loss is a pair (p_good_to_bad, p_bad_to_good), got {burst_loss!r}") from None
            burst_loss = (
                _probability("burst_loss p_good_to_bad", p),
                _probability("burst_loss p_bad_to_good", r, allow_zero=False),
            )
        self.burst_loss: tuple[float, float] | None = burst_loss
        self.reorder = _probability("reorder", reorder)
        self.duplicate = _probability("duplicate", duplicate)
        self.jitter = _seconds("jitter", jitter)
        self.delay = _seconds("delay", delay)
        self.interval = _seconds("interval", interval)
        if self.interval == 0.0:
            raise ValueError("interval must be > 0 seconds")
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed: int = random.SystemRandom().getrandbits(63) if seed is None else seed
        self.reset()
        _log.debug("created %r", self)  # the seed in the log is what replays a failing run

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in ("loss", "burst_loss", "reorder", "duplicate", "jitter", "delay")]
        return f"<Impairment {' '.join(parts)} seed={self.seed}>"

    def reset(self) -> None:
        """Rewind to the state right after construction: same seed, counters at zero, chain good."""
        self._rng = random.Random(self.seed)
        self._bad = False
        self._sent = self._dropped = self._duplicated = self._reordered = self._delivered = 0

    def with_seed(self, seed: int | None) -> Impairment:
        """A fresh impairment with the same parameters and another seed (e.g. one per member)."""
        return Impairment(
            self.loss,
            self.burst_loss,
            self.reorder,
            self.duplicate,
            self.jitter,
            self.delay,
            seed,
            interval=self.interval,
        )

    @property
    def is_noop(self) -> bool:
        """Whether every packet is delivered once at its send time (the shell can skip it)."""
        return not (self.loss or self.burst_loss or self.reorder or self.duplicate or self.jitter or self.delay)

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of packets lost (random and burst loss combined)."""
        if self.burst_loss is None:
            return self.loss
        p, r = self.burst_loss
        bad = p / (p + r)
        return bad + (1.0 - bad) * self.loss

    @property
    def stats(self) -> ImpairmentStats:
        """The counters so far."""
        return ImpairmentStats(self._sent, self._dropped, self._duplicated, self._reordered, self._delivered)

    def apply(self, packet: bytes, send_time: float) -> list[tuple[float, bytes]]:
        """Decide the fate of one packet.

        Parameters
        ----------
        packet: :class:`bytes`
            The datagram (returned unchanged: impairment never alters bytes).
        send_time: :class:`float`
            When it left the sender (seconds, the caller's clock).

        Returns
        -------
        list[tuple[:class:`float`, :class:`bytes`]]
            ``(delivery_time, packet)`` pairs in delivery order: empty when lost, two when
            duplicated, else one. Packets must be offered in send order for ``reorder`` and
            ``burst_loss`` to mean what they say.
        """
        rng = self._rng
        # Fixed draws per packet (see Notes in the class docstring).
        u_loss, u_chain, u_reorder, u_dup = rng.random(), rng.random(), rng.random(), rng.random()
        gauss, hold, dup_gap = rng.gauss(0.0, 1.0), rng.randint(1, 3), rng.random()
        self._sent += 1

        if self.burst_loss is not None:
            p, r = self.burst_loss
            self._bad = (u_chain >= r) if self._bad else (u_chain < p)
        if self._bad or u_loss < self.loss:
            self._dropped += 1
            return []

        t = send_time + self.delay + abs(gauss) * self.jitter
        if u_reorder < self.reorder:
            t += (hold + 0.5) * self.interval
            self._reordered += 1
        out = [(t, packet)]
        if u_dup < self.duplicate:
            out.append((t + dup_gap * self.interval, packet))
            self._duplicated += 1
        self._delivered += len(out)
        return out

    @staticmethod
    def chain(*stages: PacketImpairment) -> ImpairmentChain:
        """Run packets through several impairments in turn (see :class:`ImpairmentChain`)."""
        return ImpairmentChain(*stages)


class ImpairmentChain:
    """Impairments applied one after another: every delivery of a stage enters the next.

    A later stage sees the earlier stage's delivery time as the send time, and counts a
    duplicate from an earlier stage as a packet of its own (so its :attr:`ImpairmentStats.sent`
    can exceed the number of packets the sender sent). Losses compound:
    ``1 - (1 - a)(1 - b)``; delays and jitters add.
    """

    def __init__(self, *stages: PacketImpairment) -> None:
        if not stages:
            raise ValueError("an impairment chain needs at least one stage")
        self.stages: tuple[PacketImpairment, ...] = stages

    def __repr__(self) -> str:
        return f"<ImpairmentChain {' -> '.join(map(repr, self.stages))}>"

    def apply(self, packet: bytes, send_time: float) -> list[tuple[float, bytes]]:
        """Like :meth:`Impairment.apply`, through every stage; deliveries sorted by time."""
        deliveries = [(send_time, packet)]
        for stage in self.stages:
            deliveries = [d for t, p in deliveries for d in stage.apply(p, t)]
            if not deliveries:
                break
        deliveries.sort(key=lambda d: d[0])
        return deliveries


# -- hostile / foreign packets ----------------------------------------------------------------


def _rng(rng: random.Random | int | None) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def garbage_datagram(rng: random.Random | int | None = None, size: int | None = None) -> bytes:
    """Random bytes: a datagram from nowhere, or a packet mangled beyond recognition.

    Parameters
    ----------
    rng: Union[:class:`random.Random`, :class:`int`, None]
        Generator or seed (reproducible garbage).
    size: Optional[:class:`int`]
        Length in bytes, 0..65507 (the largest UDP payload over IPv4); random 1..1200 if ``None``.
        Lengths under 12 exercise the "shorter than an RTP header" path; some random first
        bytes look like RTP version 2 or even RTCP, which is the point.
    """
    gen = _rng(rng)
    if size is None:
        size = gen.randint(1, 1200)
    if not 0 <= size <= 65507:
        raise ValueError(f"size must be 0..65507 bytes, got {size!r}")
    return gen.randbytes(size)


def with_wrong_tag(packet: bytes, *, byte: int = 0) -> bytes:
    """A copy of an encrypted ``*_rtpsize`` packet whose authentication tag no longer verifies.

    Flips all bits of one byte of the 16-byte tag (which sits just before the 4-byte nonce
    counter at the end), leaving header, ciphertext and nonce intact: decryption must fail
    and the receiver must drop and count it.

    Parameters
    ----------
    byte: :class:`int`
        Which tag byte to flip, 0..15.
    """
    if not 0 <= byte < _TAG:
        raise ValueError(f"byte must index the 16-byte tag (0..15), got {byte!r}")
    if len(packet) < 12 + _TAG + _NONCE_SUFFIX:
        raise ValueError(f"a {len(packet)}-byte packet is too short to hold a header, tag and nonce")
    out = bytearray(packet)
    out[len(out) - _NONCE_SUFFIX - _TAG + byte] ^= 0xFF
    return bytes(out)


def video_packet(
    cipher: TransportCipher,
    counter: int,
    *,
    ssrc: int,
    sequence: int = 0,
    timestamp: int = 0,
    payload_type: int = VIDEO_PAYLOAD_TYPE,
    payload: bytes | None = None,
    size: int = 900,
    rng: random.Random | int | None = None,
    marker: bool = True,
) -> bytes:
    """A correctly transport-encrypted RTP packet that is not Opus audio (video, RTX...).

    It authenticates fine, so only its payload type (or its SSRC being a video SSRC from
    op 12) tells the receiver to keep it away from the Opus decoder.

    Parameters
    ----------
    payload_type: :class:`int`
        103 (video) by default; anything but 120.
    payload: Optional[:class:`bytes`]
        The (fake) video payload; ``size`` random bytes from ``rng`` when ``None`` (not valid
        Opus, so a receiver that decodes it anyway fails loudly).
    marker: :class:`bool`
        Video sets the marker on the last packet of a picture; default on.
    """
    if payload_type == 120:
        raise ValueError("payload type 120 is Opus audio; use another for a video packet")
    if payload is None:
        payload = _rng(rng).randbytes(size)
    return build_rtp_packet(
        cipher,
        counter,
        ssrc=ssrc,
        sequence=sequence,
        timestamp=timestamp,
        payload=payload,
        payload_type=payload_type,
        marker=marker,
    )


_unknown_opus: tuple[bytes, int] | None = None


def _opus_frame() -> tuple[bytes, int]:
    # One real 20 ms Opus frame of a 440 Hz tone (and its audio level), encoded once: the
    # packet must be valid audio so that only the unknown SSRC, not a decode error, is why a
    # receiver drops it.
    global _unknown_opus
    if _unknown_opus is None:
        from .audio import tone

        pcm = tone(440.0, _INTERVAL, 0.3)
        _unknown_opus = (OpusEncoder().encode(pcm), audio_level(pcm))
    return _unknown_opus


def unknown_ssrc_packet(
    cipher: TransportCipher,
    counter: int,
    *,
    ssrc: int,
    sequence: int = 0,
    timestamp: int = 0,
    payload: bytes | None = None,
) -> bytes:
    """A well-formed, correctly encrypted Opus audio packet from an SSRC nobody announced.

    It carries the audio-level extension and real Opus (not DAVE-encrypted: whoever sent it is
    in no MLS group), so everything about it is valid except that no op 5 / op 12 maps its SSRC
    to a user. ``payload`` overrides the Opus frame.
    """
    opus, level = _opus_frame()
    return build_rtp_packet(
        cipher,
        counter,
        ssrc=ssrc,
        sequence=sequence,
        timestamp=timestamp,
        payload=opus if payload is None else payload,
        audio_level=level,
    )
