"""The receive path of one voice connection, sans-I/O: datagram in, ordered Opus packets out.

On arrival (discord.py's socket thread, so it must stay cheap): parse the clear header ->
drop non-audio -> transport-decrypt (authenticates) -> strip extension and padding -> push
into the SSRC's jitter buffer.

On each poll (the session's pump thread, every ~10 ms): release packets in sequence order ->
place them on the recording timeline (by RTP timestamp within a talk spurt, by arrival time
across gaps) -> find the SSRC's user -> DAVE-decrypt, in order.

A packet that cannot be decrypted *yet* (its SSRC's user is not known, or the DAVE key for
that user has not arrived: a member's first words) stays at the head of its SSRC's queue,
bounded in count and time, and is retried on every poll; its place on the timeline was fixed
when it was released, so waiting does not move it. Nothing here reads a clock or touches a
socket: ``now`` is passed in, and the listening session owns the threads.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import davey

from . import dave
from .opus import FRAME_SAMPLES, SAMPLE_RATE, packet_has_fec
from .reorder import JitterBuffer, PushResult, seq_diff, ts_diff
from .rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    OPUS_PAYLOAD_TYPE,
    MalformedPacket,
    RTCPPacket,
    is_rtcp,
    parse_audio_level,
    parse_rtcp,
    parse_rtp_header,
    split_plaintext,
)
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats
from .timeline import StreamClock
from .transport import DecryptionFailed, TransportCipher, transport_cipher

__all__ = ("PacketReceiver", "ReceivedPacket", "SpeakingChange")

_log = logging.getLogger(__name__)

_AUDIO: Final = davey.MediaType.audio
_ACCEPTED: Final = PushResult.ACCEPTED
FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE
#: Seconds around a transport key change during which either key is accepted.
KEY_GRACE: Final = 1.0
#: Packets that failed authentication kept for a retry when the key changes.
MAX_PARKED: Final = 64
#: Frames of concealment one SSRC may ask for at once; the budget refills at one frame per
#: frame of arrival time, so skipped sequence numbers cannot flood the decoder and sinks.
CONCEAL_BURST: Final = 50
#: A talker is "stopped" after this long without a packet (senders stop sending in silence).
SPEAKING_TIMEOUT: Final = 0.25
#: ValueError texts from davey meaning "the key is not here yet" (worth holding and retrying).
#: "NoValidCryptorFound" is not one of them: the bot holds keys for the sender, but none
#: of the frame's epoch. libdave clients switch keys only at op 22, after the bot reported
#: ready for the new epoch, so such a frame was sealed under an epoch the bot no longer (or
#: never) holds, and no later message brings that key back.
_RETRYABLE_DAVE: Final = ("NoDecryptorForUser", "NoDecryptor", "MissingKey")
#: Consecutive undecryptable frames of one sender after which the bot's DAVE state is
#: taken to be broken and a recovery is asked for (discord.js re-initialises at 36).
DAVE_FAILURE_LIMIT: Final = 36
#: Seconds before the same sender may ask for another recovery (one re-key takes a round
#: trip through the voice server and every member).
DAVE_RECOVERY_COOLDOWN: Final = 10.0
#: Seconds between two attempts to find the owner of an unmapped SSRC by trial decryption,
#: and how many candidate users one attempt tries at most.
INFER_INTERVAL: Final = 0.1
INFER_CANDIDATES: Final = 64
#: The length of a UDP keepalive (and of the server's echo of one): never RTP or RTCP,
#: which are at least 12 bytes before encryption adds its tag and nonce.
KEEPALIVE_SIZE: Final = 8
#: First header byte of the layout every Discord client sends: RTP version 2, a header
#: extension, no padding, no CSRCs (parsed inline; anything else goes to parse_rtp_header).
_PLAIN_B0: Final = 0x90
_unpack_header = struct.Struct(">BBHII").unpack_from
_unpack_words = struct.Struct(">H").unpack_from


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


@dataclass(slots=True)
class _Pending:
    """Released by the jitter buffer (so in order and placed in time), not yet E2E-decrypted."""

    sequence: int
    timestamp: int
    payload: bytes
    audio_level: int | None
    arrival: float
    lost_positions: tuple[int, ...]
    position: int
    new_stream: bool


@dataclass(slots=True)
class _Stream:
    ssrc: int
    buffer: JitterBuffer
    clock: StreamClock
    pending: deque[_Pending] = field(default_factory=deque)
    last_arrival: float = 0.0
    speaking: bool = False
    #: Timeline positions of frames dropped after release (undecryptable...), handed on with
    #: the next packet's ``lost_positions`` so the decoder conceals them.
    carry_lost: tuple[int, ...] = ()
    #: Concealment budget in frames, and the arrival time it was last topped up at.
    conceal_credit: float = CONCEAL_BURST
    credit_at: float = 0.0
    #: Set once the SSRC's first packet went out (see :meth:`PacketReceiver._leading_loss`).
    started: bool = False
    #: RTP timestamp of the last audio packet placed (padding-only packets repeat it).
    last_timestamp: int | None = None
    #: Padding-only packets released since the last audio packet, the sequence numbers
    #: missing among them, and whether one of them started the stream.
    padding_run: int = 0
    padding_missing: int = 0
    padding_new_stream: bool = False
    #: Undecryptable DAVE frames in a row, and when this sender last asked for a recovery.
    dave_failures: int = 0
    recovery_at: float = float("-inf")
    #: When an owner was last looked for by trial decryption (unmapped SSRC).
    infer_at: float = float("-inf")


class PacketReceiver:
    """Turns one connection's datagrams into ordered, decrypted Opus packets per SSRC.

    Transport decryption happens on arrival (it authenticates: forged packets never touch
    any state). DAVE decryption happens after the jitter buffer put the packets in order,
    because davey refuses a sender's frames older than the first one it decrypted: decrypting
    in arrival order would lose the first words whenever they arrive reordered.

    Parameters
    ----------
    connection: Any
        discord.py's ``VoiceConnectionState`` (read for ``mode``, ``secret_key``,
        ``dave_session``, ``dave_protocol_version``), or any object with those attributes.
    ssrc_map: :class:`SSRCMap`
        Who owns which SSRC.
    stats: :class:`ListenStats`
        Where counters go.
    origin: :class:`float`
        The monotonic time of the recording timeline's sample 0.
    jitter_depth: :class:`float`
        Seconds a packet waits for missing predecessors before they are declared lost.
    hold_time: :class:`float`
        Seconds a packet may wait for its user or DAVE key before it is dropped (counted).
    max_held: :class:`int`
        Packets held per SSRC at most (older ones are dropped, counted as overflow).
    max_streams: :class:`int`
        SSRCs tracked at most; a flood of fresh SSRCs beyond this is dropped and counted.
    """

    def __init__(
        self,
        connection: Any,
        ssrc_map: SSRCMap,
        stats: ListenStats,
        *,
        origin: float,
        jitter_depth: float = 0.06,
        hold_time: float = 5.0,
        max_held: int = 500,
        max_streams: int = 256,
    ) -> None:
        if not 0.0 <= jitter_depth <= 2.0:
            raise ValueError(f"jitter_depth must be within 0..2 seconds, got {jitter_depth!r}")
        if not hold_time > 0:
            raise ValueError(f"hold_time must be positive, got {hold_time!r}")
        if max_held < 1 or max_streams < 1:
            raise ValueError("max_held and max_streams must be at least 1")
        self._conn = connection
        self._map = ssrc_map
        self.stats = stats
        self.origin = origin
        self.jitter_depth = jitter_depth
        self.hold_time = hold_time
        self.max_held = max_held
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._cipher: TransportCipher | None = None
        self._cipher_key: Any = None
        self._cipher_mode: str | None = None
        # Around a key change the UDP and websocket paths race: packets sealed with the new
        # key can arrive before SESSION_DESCRIPTION does, and ones sealed with the old key
        # after it. The old cipher stays usable for a grace period, and packets that fail
        # authentication are parked (bounded) and retried once when the key changes.
        self._prev_cipher: TransportCipher | None = None
        self._prev_until = 0.0
        self._parked: deque[tuple[bytes, float]] = deque()
        self._key_changed = False
        self._recoveries: list[int] = []
        self.paused = False

    # -- socket thread -------------------------------------------------------------------

    def _current_cipher(self) -> TransportCipher | None:
        key = getattr(self._conn, "secret_key", None)
        mode = getattr(self._conn, "mode", None)
        # discord.py assigns a fresh list on every SESSION_DESCRIPTION, so identity tells us
        # the key changed without comparing 32 bytes per packet.
        if key is not self._cipher_key or mode is not self._cipher_mode:
            self._cipher_key, self._cipher_mode = key, mode
            self._prev_cipher, self._cipher = self._cipher, None
            self._key_changed = True
            if key and mode:
                try:
                    self._cipher = transport_cipher(mode, bytes(key))
                except ValueError:
                    _log.error("voice connection uses unsupported mode %r; cannot decrypt", mode)
        return self._cipher

    def datagram(self, data: bytes, now: float) -> list[RTCPPacket] | None:
        """Take one datagram from the voice socket.

        Returns the parsed RTCP packets if it was RTCP, else ``None``. Never raises for bad
        input: every rejected datagram is counted.
        """
        return self.datagrams([data], [now]) or None

    def datagrams(self, batch: list[bytes], arrivals: list[float]) -> list[RTCPPacket]:
        """Take datagrams read in one go, each with its arrival time, in the order read.

        Returns the RTCP packets among them, in order. Never raises for bad input: every
        rejected datagram is counted.
        """
        rtcp: list[RTCPPacket] = []
        rtp_one = self._rtp_one
        for data, now in zip(batch, arrivals):
            try:
                if len(data) == KEEPALIVE_SIZE:
                    # The voice server echoing our keepalive (some do, some never do).
                    self.stats.keepalive_echoes += 1
                    continue
                if is_rtcp(data):
                    packets = self._rtcp(data)
                    if packets:
                        rtcp += packets
                    continue
                rtp_one(data, now)
                if self._key_changed:
                    self._retry_parked(now)
            except Exception:  # a bug must not kill discord.py's socket thread
                _log.exception("unexpected error handling a %d-byte datagram", len(data))
                self.stats.drop_unattributed(DropReason.malformed)
        return rtcp

    def _rtcp(self, data: bytes) -> list[RTCPPacket] | None:
        cipher = self._current_cipher()
        if cipher is None:
            return None
        try:
            packets = parse_rtcp(cipher.decrypt_rtcp(data))
        except DecryptionFailed:
            self.stats.drop_unattributed(DropReason.auth_failed)
            return None
        except MalformedPacket:
            self.stats.drop_unattributed(DropReason.malformed)
            return None
        self.stats.rtcp_packets += len(packets)
        return packets

    def _retry_parked(self, now: float) -> None:
        self._key_changed = False
        self._prev_until = now + KEY_GRACE
        parked, self._parked = list(self._parked), deque()
        for old, arrival in parked:
            self._rtp_one(old, arrival, retry=True)

    def _park(self, data: bytes, now: float) -> None:
        parked = self._parked
        while parked and (len(parked) >= MAX_PARKED or now - parked[0][1] > KEY_GRACE):
            parked.popleft()
            self.stats.drop_unattributed(DropReason.auth_failed)
        parked.append((data, now))

    def _open_prev(self, data: bytes, aad_length: int, now: float) -> bytes | None:
        """The current key failed: the previous one, within its grace period."""
        prev = self._prev_cipher
        if prev is not None and now < self._prev_until:
            try:
                return prev.decrypt(data, aad_length)
            except DecryptionFailed:
                pass
        return None

    def _rtp_one(self, data: bytes, now: float, retry: bool = False) -> None:
        stats = self.stats
        header = None
        if len(data) >= 16 and data[0] == _PLAIN_B0:
            # What every Discord client sends, parsed without building an RTPHeader.
            _, b1, sequence, timestamp, ssrc = _unpack_header(data)
            payload_type = b1 & 0x7F
            aad_length = 16
            ext_len = 4 * _unpack_words(data, 14)[0]
        else:
            if len(data) == 74 and data[1] == 0x02:
                return  # an IP discovery reply: discord.py's own business
            try:
                header = parse_rtp_header(data)
            except MalformedPacket:
                stats.drop_unattributed(DropReason.malformed)
                return
            sequence, timestamp, ssrc = header.sequence, header.timestamp, header.ssrc
            payload_type, aad_length, ext_len = header.payload_type, header.aad_length, header.extension_length
        if payload_type != OPUS_PAYLOAD_TYPE or self._map.is_video(ssrc):
            stats.drop(self._map.user_for(ssrc), DropReason.not_audio)
            return
        cipher = self._current_cipher()
        plain = None
        if cipher is not None:
            try:
                plain = cipher.decrypt(data, aad_length)
            except DecryptionFailed:
                plain = self._open_prev(data, aad_length, now)
        if plain is None:
            if retry:
                stats.drop_unattributed(DropReason.auth_failed)
            else:
                self._park(data, now)
            return
        try:
            if header is None:  # split_plaintext for the layout without padding
                if ext_len > len(plain):
                    raise MalformedPacket("header extension longer than the packet")
                payload = plain[ext_len:]
            else:
                payload = split_plaintext(plain, header)[1]
        except MalformedPacket:
            stats.drop(self._map.user_for(ssrc), DropReason.malformed)
            return
        if not payload:
            # Padding only (libwebrtc probing bandwidth mid-call): no media, but it uses up a
            # sequence number, so it goes through the jitter buffer to keep the count honest.
            self._push_padding(ssrc, sequence, timestamp, now)
            return
        if ext_len > 1 and plain[0] >> 4 == AUDIO_LEVEL_EXTENSION_ID:
            level: int | None = plain[1] & 0x7F  # where clients put it: first (saves a call a packet)
        else:
            level = parse_audio_level(plain, ext_len) if ext_len else None
        with self._lock:
            stream = self._streams.get(ssrc)
            if stream is None:
                if len(self._streams) >= self.max_streams and not self._evict_idle(now):
                    stats.add(self._map.user_for(ssrc), "received")
                    stats.drop(self._map.user_for(ssrc), DropReason.overflow)
                    return
                stream = self._streams[ssrc] = _Stream(
                    ssrc, JitterBuffer(depth=self.jitter_depth), StreamClock(origin=self.origin)
                )
            stream.last_arrival = now
            if self.paused:
                stats.add(self._map.user_for(ssrc), "received")
                stats.drop(self._map.user_for(ssrc), DropReason.paused)
                return
            result = stream.buffer.push(sequence, timestamp, (payload, level), now)
            if result is not _ACCEPTED:
                user_id = self._map.user_for(ssrc)
                if not result.accepted:
                    stats.add(user_id, "received")
                    stats.drop(user_id, DropReason.duplicate if result.duplicate else DropReason.late)
                elif result is PushResult.OVERFLOW:
                    # The buffer let its oldest packet go to take this one (nobody polled):
                    # that packet arrived, so it is counted; its place is concealed later.
                    stats.add(user_id, "received")
                    stats.drop(user_id, DropReason.overflow)

    def _push_padding(self, ssrc: int, sequence: int, timestamp: int, now: float) -> None:
        """A padding-only packet takes its sequence number's place (``None`` payload)."""
        with self._lock:
            stream = self._streams.get(ssrc)
            if stream is None or self.paused:
                # Nothing to keep in order (a probe before any audio), or not listening now.
                self.stats.add(self._map.user_for(ssrc), "padding")
                return
            # Not an arrival of audio: it must not keep a talker "speaking".
            result = stream.buffer.push(sequence, timestamp, (None, None), now)
            if not result.accepted:
                self.stats.add(self._map.user_for(ssrc), "padding")
            elif result is PushResult.OVERFLOW:  # as for audio: the packet it pushed out is counted
                self.stats.add(self._map.user_for(ssrc), "received")
                self.stats.drop(self._map.user_for(ssrc), DropReason.overflow)

    def _evict_idle(self, now: float) -> bool:
        """Make room for a new SSRC; ``False`` when every tracked SSRC belongs to a member.

        Called with the lock held. The stream idle the longest goes first, if it has been
        idle a while. Failing that, the unclaimed stream (no member named it) that sent last
        the longest ago makes room, what it holds counted. Discord names an SSRC's owner
        only in SPEAKING, which may follow a member's first packets, so a newcomer cannot be
        told from a flood: recency decides. A flood of one-packet SSRCs then churns among
        itself, while a member who keeps sending, claimed or not yet, stays.
        """
        streams = self._streams.values()
        idle = [s for s in streams if now - s.last_arrival > 5.0 and not s.pending and not len(s.buffer)]
        if idle:
            victim = min(idle, key=lambda s: s.last_arrival)
        else:
            unclaimed = [s for s in streams if self._map.user_for(s.ssrc) is None]
            if not unclaimed:
                return False
            victim = min(unclaimed, key=lambda s: s.last_arrival)
            held = len(victim.buffer) + len(victim.pending)
            if held:
                self.stats.add(None, "received", held)
                self.stats.drop(None, DropReason.overflow, held)
        del self._streams[victim.ssrc]
        return True

    # -- pump thread ---------------------------------------------------------------------

    def poll(self, now: float) -> tuple[list[ReceivedPacket], list[SpeakingChange]]:
        """Release what is ready: ordered, decrypted packets of every SSRC, and speaking changes.

        Call this every ~10 ms from one thread.
        """
        out: list[ReceivedPacket] = []
        changes: list[SpeakingChange] = []
        counts: dict[int | None, list[int]] = {}
        try:
            with self._lock:
                for stream in self._streams.values():
                    released = stream.buffer.pop_ready(now)
                    if released:
                        self._place(stream, released, out, counts)
                    if stream.pending:
                        self._decrypt_pending(stream, now, out, counts, final=False)
                    last = stream.last_arrival
                    if (last > 0 and now - last < SPEAKING_TIMEOUT) != stream.speaking:
                        self._speaking(stream, now, changes)
        finally:
            self._count(counts)
        return out, changes

    def flush(self, now: float) -> list[ReceivedPacket]:
        """Release everything buffered (listening is ending); what cannot be decrypted now is dropped."""
        out: list[ReceivedPacket] = []
        counts: dict[int | None, list[int]] = {}
        try:
            with self._lock:
                for stream in self._streams.values():
                    self._place(stream, stream.buffer.flush(), out, counts)
                    self._decrypt_pending(stream, now, out, counts, final=True)
        finally:
            self._count(counts)
        if self._parked:
            self.stats.drop_unattributed(DropReason.auth_failed, len(self._parked))
            self._parked.clear()
        return out

    def reset_streams(self, now: float) -> list[ReceivedPacket]:
        """Flush and forget every SSRC's ordering state (after a pause: a fresh start)."""
        out: list[ReceivedPacket] = []
        counts: dict[int | None, list[int]] = {}
        try:
            with self._lock:
                for stream in self._streams.values():
                    self._place(stream, stream.buffer.reset(), out, counts)
                    if stream.pending:
                        self._decrypt_pending(stream, now, out, counts, final=False)
        finally:
            self._count(counts)
        return out

    def _count(self, counts: dict[int | None, list[int]]) -> None:
        """Per user: [packets released (received and decrypted), frames lost], once per poll."""
        if counts:
            self.stats.add_released(counts)

    def _e2ee(self) -> tuple[Any, bool]:
        session = getattr(self._conn, "dave_session", None)
        return session, session is not None and bool(getattr(self._conn, "dave_protocol_version", 0))

    def _place(
        self, stream: _Stream, released: list[Any], out: list[ReceivedPacket], counts: dict[int | None, list[int]]
    ) -> None:
        """Put released packets (and the frames lost before them) on the timeline, and send
        them on: straight out when nothing waits before them and they need neither a DAVE key
        nor to wait for their user, else queued for E2E decryption (:meth:`_decrypt_pending`)."""
        if not released:
            return
        pending = stream.pending
        clock = stream.clock
        user_id = self._map.user_for(stream.ssrc)
        e2ee = self._e2ee()[1]
        # Straight out only where queueing could not have dropped anything (max_held).
        direct = user_id is not None and not pending and len(released) <= self.max_held
        arrivals = _debursted_arrivals(released) if len(released) > 1 else None
        for k, r in enumerate(released):
            arrival = r.arrival if arrivals is None else arrivals[k]
            payload, level = r.payload
            if payload is None:
                self._padding(stream, r, user_id)
                continue
            if stream.padding_run:
                r = self._after_padding(stream, r)
            stream.last_timestamp = r.timestamp
            lost_positions: tuple[int, ...] = ()
            if r.lost_before:
                # Concealment is paid from a budget that refills in real time: a sender that
                # skips sequence numbers (a member picks its own) cannot make the decoder and
                # every sink take more than about one extra frame per 20 ms, plus a burst.
                # Beyond that the gap stays a gap on the timeline (still counted as lost).
                lost = r.lost_before
                # (true arrival times: the debursted ones trust the sender's numbers)
                credit = stream.conceal_credit + max(0.0, r.arrival - stream.credit_at) / FRAME_SECONDS
                credit = min(float(CONCEAL_BURST), credit)
                stream.credit_at = max(stream.credit_at, r.arrival)
                if lost > credit:
                    self.stats.add(self._map.user_for(stream.ssrc), "lost", lost - int(credit))
                    lost = int(credit)
                stream.conceal_credit = credit - lost
                # Place each lost frame like a received one, so concealment can never overlap
                # earlier audio even when the clock re-anchors at this packet.
                first = r.timestamp - FRAME_SAMPLES * lost
                lost_positions = tuple(
                    clock.position((first + FRAME_SAMPLES * i) & 0xFFFFFFFF, arrival) for i in range(lost)
                )
            silence = dave.is_silence(payload)
            position = clock.position(r.timestamp, arrival, new_stream=r.new_stream, silence=silence)
            if direct and not pending and not (e2ee and not silence) and not dave.is_dave_frame(payload):
                # What _decrypt_pending would do with it at once, without the queue.
                self._emit(
                    stream,
                    user_id,
                    r.sequence,
                    r.timestamp,
                    payload,
                    lost_positions,
                    position,
                    r.arrival,
                    level,
                    r.new_stream,
                    out,
                    counts,
                )
                continue
            if len(pending) >= self.max_held:
                self._drop_head(stream, DropReason.overflow)
            pending.append(
                _Pending(r.sequence, r.timestamp, payload, level, r.arrival, lost_positions, position, r.new_stream)
            )

    def _padding(self, stream: _Stream, r: Any, user_id: int | None) -> None:
        """A released padding-only packet: no frame, no position, no loss, no time."""
        self.stats.add(user_id, "padding")
        stream.padding_run += 1
        stream.padding_missing += r.lost_before
        stream.padding_new_stream |= r.new_stream

    @staticmethod
    def _after_padding(stream: _Stream, r: Any) -> Any:
        """The first audio packet after padding: count as lost only the *audio* frames missing.

        The sequence numbers missing around a padding burst may have been padding (lost
        probes are no loss of audio); the RTP timestamp, which padding does not advance,
        says how many audio frames really lie between this packet and the last one.
        """
        missing = stream.padding_missing + r.lost_before
        new_stream = stream.padding_new_stream or r.new_stream
        stream.padding_run = stream.padding_missing = 0
        stream.padding_new_stream = False
        lost = 0
        if missing and not new_stream and stream.last_timestamp is not None:
            between = ts_diff(r.timestamp, stream.last_timestamp) // FRAME_SAMPLES - 1
            lost = max(0, min(missing, between))
        return r._replace(lost_before=lost, new_stream=new_stream)

    def _drop_head(self, stream: _Stream, reason: DropReason) -> None:
        p = stream.pending.popleft()
        user_id = self._map.user_for(stream.ssrc)
        self.stats.add(user_id, "received")
        self.stats.drop(user_id, reason)
        # The decoder must still conceal this frame's slot (and any loss before it).
        stream.carry_lost += (*p.lost_positions, p.position)

    def _decrypt_pending(
        self,
        stream: _Stream,
        now: float,
        out: list[ReceivedPacket],
        counts: dict[int | None, list[int]],
        *,
        final: bool,
    ) -> None:
        user_id = self._map.user_for(stream.ssrc)
        session, e2ee = self._e2ee()
        pending = stream.pending
        while pending:
            p = pending[0]
            may_wait = not final and now - p.arrival < self.hold_time
            payload = p.payload
            if dave.is_dave_frame(payload) or (e2ee and not dave.is_silence(payload)):
                # E2E-encrypted, or clear audio under DAVE (allowed only while davey's
                # passthrough is on during a transition, which decrypt() knows).
                if user_id is None and session is not None and dave.is_dave_frame(payload):
                    found = self._infer_owner(stream, session, payload, now)
                    if found is not None:
                        user_id, payload = found
                        pending.popleft()
                        self._emit(
                            stream,
                            user_id,
                            p.sequence,
                            p.timestamp,
                            payload,
                            p.lost_positions,
                            p.position,
                            p.arrival,
                            p.audio_level,
                            p.new_stream,
                            out,
                            counts,
                        )
                        continue
                if user_id is None or session is None:
                    if may_wait:
                        return  # the SPEAKING (op 5) or the MLS welcome is on its way
                    self._drop_head(stream, DropReason.unknown_ssrc if user_id is None else DropReason.undecryptable)
                    continue
                try:
                    payload = session.decrypt(user_id, _AUDIO, payload)
                except ValueError as exc:
                    text = str(exc)
                    if may_wait and any(tag in text for tag in _RETRYABLE_DAVE):
                        return  # the key for this user arrives with the next commit/welcome
                    unencrypted = "Unencrypted" in text
                    _log.debug("DAVE frame of user %s seq %d not decryptable: %s", user_id, p.sequence, text)
                    self._drop_head(stream, DropReason.unencrypted if unencrypted else DropReason.undecryptable)
                    if not unencrypted:
                        self._dave_failed(stream, user_id, now)
                    continue
                stream.dave_failures = 0
            elif user_id is None and may_wait:
                # No E2EE: decodable, but a sink wants to know whose audio it is. Wait a
                # little for SPEAKING; after hold_time it goes out with user None, not lost.
                return
            pending.popleft()
            self._emit(
                stream,
                user_id,
                p.sequence,
                p.timestamp,
                payload,
                p.lost_positions,
                p.position,
                p.arrival,
                p.audio_level,
                p.new_stream,
                out,
                counts,
            )

    def _infer_owner(self, stream: _Stream, session: Any, frame: bytes, now: float) -> tuple[int, bytes] | None:
        """Find whose frame this is by trying the keys of members with no known SSRC.

        Discord names an SSRC's owner only in SPEAKING (op 5), which may come after the first
        packets or, for a member who was speaking before the bot connected, not at all. A
        DAVE frame authenticates under its sender's key only (AES-GCM), so the one member
        whose key opens it is its owner: then the SSRC is mapped and its audio flows.
        Bounded: one attempt per :data:`INFER_INTERVAL` per SSRC, :data:`INFER_CANDIDATES`
        users at most; a wrong key fails without touching the real sender's state.
        """
        if now - stream.infer_at < INFER_INTERVAL:
            return None
        stream.infer_at = now
        for user_id in self._map.unmapped_users()[:INFER_CANDIDATES]:
            try:
                plain = session.decrypt(user_id, _AUDIO, frame)
            except ValueError:
                continue
            self._map.set_audio(stream.ssrc, user_id)
            self.stats.ssrcs_inferred += 1
            _log.info(
                "SSRC %d belongs to user %s (its DAVE key opened the frame; no SPEAKING named it)", stream.ssrc, user_id
            )
            return user_id, plain
        return None

    def _dave_failed(self, stream: _Stream, user_id: int, now: float) -> None:
        """One more undecryptable frame of ``user_id``; after too many in a row, ask for a re-key."""
        stream.dave_failures += 1
        if stream.dave_failures < DAVE_FAILURE_LIMIT or now - stream.recovery_at < DAVE_RECOVERY_COOLDOWN:
            return
        stream.dave_failures = 0
        stream.recovery_at = now
        self.stats.dave_recoveries += 1
        self._recoveries.append(user_id)
        _log.warning(
            "%d DAVE frames of user %s in a row could not be decrypted: asking for a new DAVE session",
            DAVE_FAILURE_LIMIT,
            user_id,
        )

    def take_dave_recoveries(self) -> list[int]:
        """Users whose frames kept failing since the last call: the DAVE state needs a re-key.

        The caller (which owns the voice connection) re-initialises the DAVE session: the
        voice server then re-adds the bot to the group with fresh keys.
        """
        if not self._recoveries:  # the common case, without the lock
            return []
        with self._lock:
            out, self._recoveries = self._recoveries, []
        return out

    def _emit(
        self,
        stream: _Stream,
        user_id: int | None,
        sequence: int,
        timestamp: int,
        payload: bytes,
        lost_positions: tuple[int, ...],
        position: int,
        arrival: float,
        level: int | None,
        new_stream: bool,
        out: list[ReceivedPacket],
        counts: dict[int | None, list[int]],
    ) -> None:
        """One packet goes out (counted in ``counts``, see :meth:`_count`)."""
        if stream.carry_lost:
            lost_positions = stream.carry_lost + lost_positions
            stream.carry_lost = ()
        if not stream.started:
            stream.started = True
            lost_positions = self._leading_loss(new_stream, position, payload) + lost_positions
        c = counts.get(user_id)
        if c is None:
            c = counts[user_id] = [0, 0]
        c[0] += 1
        if lost_positions:
            c[1] += len(lost_positions)
        out.append(
            ReceivedPacket(
                stream.ssrc,
                user_id,
                sequence,
                timestamp,
                payload,
                lost_positions,
                position,
                arrival,
                level,
                new_stream,
            )
        )

    @staticmethod
    def _leading_loss(new_stream: bool, position: int, payload: bytes) -> tuple[int, ...]:
        """The position of a lost frame right before an SSRC's first received packet, if any.

        Nothing before the first packet says a packet is missing, except the packet itself:
        Opus puts low-bitrate redundancy (LBRR) of the previous frame only into a packet whose
        encoder did produce that frame. So a first packet carrying LBRR means its predecessor
        was sent and lost on the way (typically a member's first word on a lossy network),
        and the decoder can rebuild it from this packet's FEC data.
        """
        if new_stream and position >= FRAME_SAMPLES and packet_has_fec(payload):
            return (position - FRAME_SAMPLES,)
        return ()

    def _speaking(self, stream: _Stream, now: float, changes: list[SpeakingChange]) -> None:
        active = stream.last_arrival > 0 and now - stream.last_arrival < SPEAKING_TIMEOUT
        if active != stream.speaking:
            user_id = self._map.user_for(stream.ssrc)
            if active and user_id is None:
                # Whose voice this is arrives with SPEAKING / op 12, often just after the first
                # packet: announce the start then, rather than a start nobody can be told of.
                return
            stream.speaking = active
            changes.append(SpeakingChange(stream.ssrc, user_id, active))

    @property
    def ssrcs(self) -> list[int]:
        """SSRCs currently tracked."""
        return list(self._streams)


def _debursted_arrivals(released: list[Any]) -> list[float]:
    """Arrival times with bursts undone, for placing packets on the timeline.

    When the receiving thread stalls (GIL, a busy machine), packets that were sent 20 ms
    apart are read together; taken at face value, the first of them looks late and would
    shift the speech on the timeline. A packet cannot have been sent later than its
    successor minus their RTP distance, so within one contiguous release each arrival is
    capped by the next one's. This only ever moves arrivals earlier.
    """
    out = [r.arrival for r in released]
    for i in range(len(released) - 2, -1, -1):
        a, b = released[i], released[i + 1]
        if b.new_stream:
            continue
        step = seq_diff(b.sequence, a.sequence)
        if step >= 1 and ts_diff(b.timestamp, a.timestamp) == FRAME_SAMPLES * step:
            cap = out[i + 1] - step * FRAME_SECONDS
            if cap < out[i]:
                out[i] = cap
    return out
