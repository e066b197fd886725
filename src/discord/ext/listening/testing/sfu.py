"""RTCP the voice server itself (Discord's SFU) sends a client: receiver reports and feedback.

Discord's SFU sends clients RTCP receiver reports (payload type 201) about the streams it
receives from them, and feedback messages: transport-layer (RTPFB, payload type 205, e.g. a
generic NACK, FMT 1) and payload-specific (PSFB, 206, e.g. a picture loss indication, FMT 1).
Members' sender reports, on the other hand, may never be forwarded. This module builds those
packets in clear (the emulator seals them like any RTCP) and keeps the reception statistics
(RFC 3550 section 6.4.1 and appendix A) of what the bot sends, for the report blocks.

Feedback layout (RFC 4585 section 6.1): ``V=2 | P | FMT (5 bits)``, payload type, length in
32-bit words minus one, sender SSRC, media SSRC, then the feedback control information (FCI).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import Final, Literal

from ..opus import SAMPLE_RATE
from ..rtp import ReportBlock

__all__ = (
    "NACK_FMT",
    "PLI_FMT",
    "PSFB",
    "RTPFB",
    "SERVER_SSRC",
    "FeedbackKind",
    "ReceptionStats",
    "build_feedback",
    "feedback",
    "nack_fci",
)

_log = logging.getLogger(__name__)

#: The SSRC the emulated SFU sends its RTCP from (never given to a member or the bot).
SERVER_SSRC: Final = 0x5F0D15C0
#: RTCP payload type of transport-layer feedback (RFC 4585).
RTPFB: Final = 205
#: RTCP payload type of payload-specific feedback (RFC 4585).
PSFB: Final = 206
#: FMT of a generic NACK (RTPFB).
NACK_FMT: Final = 1
#: FMT of a picture loss indication (PSFB).
PLI_FMT: Final = 1

#: What :func:`feedback` builds.
FeedbackKind = Literal["nack", "pli", "rtpfb", "psfb"]

_SEQ_MOD: Final = 1 << 16
_FEEDBACK_HEADER = struct.Struct(">BBHII")


def build_feedback(payload_type: int, fmt: int, sender_ssrc: int, media_ssrc: int, fci: bytes = b"") -> bytes:
    """Build a clear RTCP feedback packet (RTPFB 205 or PSFB 206).

    Raises
    ------
    ValueError
        Not 205/206, ``fmt`` outside 0..31, an SSRC outside 32 bits, or an FCI that is not a
        whole number of 32-bit words.
    """
    if payload_type not in (RTPFB, PSFB):
        raise ValueError(f"feedback payload type must be {RTPFB} (RTPFB) or {PSFB} (PSFB), got {payload_type!r}")
    if not 0 <= fmt <= 31:
        raise ValueError(f"fmt must fit 5 bits, got {fmt!r}")
    for name, ssrc in (("sender_ssrc", sender_ssrc), ("media_ssrc", media_ssrc)):
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"{name} must fit 32 bits, got {ssrc!r}")
    if len(fci) % 4:
        raise ValueError(f"the FCI must be whole 32-bit words, got {len(fci)} bytes")
    words = (_FEEDBACK_HEADER.size + len(fci)) // 4 - 1
    return _FEEDBACK_HEADER.pack(0x80 | fmt, payload_type, words, sender_ssrc, media_ssrc) + bytes(fci)


def nack_fci(sequences: Iterable[int]) -> bytes:
    """The FCI of a generic NACK naming ``sequences``: ``>H PID | >H BLP`` entries.

    Each entry covers its packet id and, in the bitmask of lost packets, the 16 after it.

    Raises
    ------
    ValueError
        No sequence numbers, or one outside 0..65535.
    """
    pending = list(dict.fromkeys(sequences))
    if not pending:
        raise ValueError("a NACK names at least one sequence number")
    for seq in pending:
        if not 0 <= seq < _SEQ_MOD:
            raise ValueError(f"sequence numbers are 0..65535, got {seq!r}")
    out = bytearray()
    while pending:
        pid = pending.pop(0)
        mask = 0
        for seq in list(pending):
            offset = (seq - pid) % _SEQ_MOD
            if 1 <= offset <= 16:
                mask |= 1 << (offset - 1)
                pending.remove(seq)
        out += struct.pack(">HH", pid, mask)
    return bytes(out)


def feedback(
    kind: FeedbackKind,
    sender_ssrc: int,
    media_ssrc: int,
    *,
    sequences: Iterable[int] = (),
    fmt: int | None = None,
    fci: bytes = b"",
) -> bytes:
    """Build a clear feedback packet by kind.

    ``"nack"``: generic NACK (205, FMT 1) asking again for ``sequences``; ``"pli"``: picture
    loss indication (206, FMT 1, no FCI); ``"rtpfb"`` / ``"psfb"``: a 205 / 206 message with
    ``fmt`` and ``fci`` as given.

    Raises
    ------
    ValueError
        Unknown kind, or what the kind needs is missing or invalid.
    """
    if kind == "nack":
        return build_feedback(RTPFB, NACK_FMT, sender_ssrc, media_ssrc, nack_fci(sequences))
    if kind == "pli":
        return build_feedback(PSFB, PLI_FMT, sender_ssrc, media_ssrc)
    if kind in ("rtpfb", "psfb"):
        if fmt is None:
            raise ValueError(f"{kind!r} feedback needs fmt=")
        return build_feedback(RTPFB if kind == "rtpfb" else PSFB, fmt, sender_ssrc, media_ssrc, fci)
    raise ValueError(f"unknown feedback kind {kind!r}; use nack, pli, rtpfb or psfb")


class ReceptionStats:
    """What a receiver knows of one incoming RTP stream, for its report block (RFC 3550 A.1, A.3, A.8).

    Parameters
    ----------
    clock_rate: :class:`int`
        RTP timestamp units per second (48000 for Opus), for the interarrival jitter.
    """

    def __init__(self, clock_rate: int = SAMPLE_RATE) -> None:
        self.clock_rate = clock_rate
        self.received = 0
        self._base: int | None = None  # first sequence number seen
        self._max = 0  # highest sequence number seen (16 bits)
        self._cycles = 0  # wraps of the sequence number, times 2^16
        self._jitter = 0.0  # in timestamp units
        self._transit: float | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, sequence: int, timestamp: int, arrival: float) -> None:
        """Count one packet (``arrival`` in seconds, any clock)."""
        if self._base is None:
            self._base = self._max = sequence
        else:
            delta = (sequence - self._max) % _SEQ_MOD
            if 0 < delta < _SEQ_MOD // 2:  # newer: duplicates and late packets do not move it
                if sequence < self._max:
                    self._cycles += _SEQ_MOD
                self._max = sequence
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            # Timestamps wrap at 2^32: fold the difference into the nearest value.
            d = (transit - self._transit + (1 << 31)) % (1 << 32) - (1 << 31)
            self._jitter += (abs(d) - self._jitter) / 16.0
        self._transit = transit

    @property
    def highest_sequence(self) -> int:
        """The extended highest sequence number received (cycles in the upper 16 bits)."""
        return (self._cycles + self._max) & 0xFFFFFFFF

    @property
    def expected(self) -> int:
        """Packets expected from the first to the highest sequence number."""
        return 0 if self._base is None else self._cycles + self._max - self._base + 1

    def report_block(self, ssrc: int) -> ReportBlock:
        """The report block about ``ssrc`` now; starts a new interval for the fraction lost."""
        expected = self.expected
        lost = max(-(1 << 23), min(expected - self.received, (1 << 23) - 1))
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (self.received - self._received_prior)
        self._expected_prior, self._received_prior = expected, self.received
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        # The bot sends no sender reports: nothing for the LSR/DLSR round-trip fields.
        return ReportBlock(ssrc, min(fraction, 255), lost, self.highest_sequence, int(self._jitter), 0, 0)
