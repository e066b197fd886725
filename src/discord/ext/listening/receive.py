"""The receive path of one voice connection, sans-I/O: datagram in, ordered Opus packets out.

On arrival (the receive engine's thread, shared by every connection: keep it cheap): parse the clear header ->
drop non-audio -> transport-decrypt (authenticates) -> strip extension and padding -> push
into the SSRC's jitter buffer.

On each poll (after a batch of datagrams, or at :meth:`PacketReceiver.next_deadline`): release packets in sequence order ->
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

from . import dave
from .decoding import lost_before_first
from .frames import ReceivedPacket, SpeakingChange
from .opus import FRAME_SAMPLES, SAMPLE_RATE
from .padding import PaddingRun
from .reorder import JitterBuffer, PushResult
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
from .seqmath import ts_add
from .ssrc import SSRCMap
from .stats import DropReason, ListenStats
from .timeline import StreamClock, debursted_arrivals
from .transport import DecryptionFailed
from .transport_keys import TransportKeyRing

__all__ = ("PacketReceiver",)

_log = logging.getLogger(__name__)

_ACCEPTED: Final = PushResult.ACCEPTED
FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE
#: Frames of concealment one SSRC may ask for at once; the budget refills at one frame per
#: frame of arrival time, so skipped sequence numbers cannot flood the decoder and sinks.
CONCEAL_BURST: Final = 50
#: A talker is "stopped" after this long without a packet (senders stop sending in silence).
SPEAKING_TIMEOUT: Final = 0.25
#: How soon :meth:`PacketReceiver.poll` wants to run again while packets wait for a DAVE key
#: or for their owner's id (those waits end on gateway messages, not on a clock).
RETRY_INTERVAL: Final = 0.01
#: The length of a UDP keepalive (and of the server's echo of one): never RTP or RTCP,
#: which are at least 12 bytes before encryption adds its tag and nonce.
KEEPALIVE_SIZE: Final = 8
#: First header byte of the layout every Discord client sends: RTP version 2, a header
#: extension, no padding, no CSRCs (parsed inline; anything else goes to parse_rtp_header).
_PLAIN_B0: Final = 0x90
_unpack_header = struct.Struct(">BBHII").unpack_from
_unpack_words = struct.Struct(">H").unpack_from


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
    #: Set once the SSRC's first packet went out (see :func:`.decoding.lost_before_first`).
    started: bool = False
    #: Padding-only packets since the last audio packet (bandwidth probes).
    padding: PaddingRun = field(default_factory=PaddingRun)
    #: DAVE bookkeeping (failures in a row, recoveries, owner search).
    dave: dave.SenderState = field(default_factory=dave.SenderState)


class PacketReceiver:
    """Turns one connection's datagrams into ordered, decrypted Opus packets per SSRC.

    Transport decryption happens on arrival (it authenticates: forged packets never touch
    any state). DAVE decryption happens after the jitter buffer put the packets in order,
    because davey refuses a sender's frames older than the first one it decrypted: decrypting
    in arrival order would lose the first words whenever they arrive reordered.

    Keys come in through :meth:`set_transport` and :meth:`set_dave` (the voice client calls
    them whenever discord.py's connection changes them); the receiver reads no discord.py
    object itself.

    Parameters
    ----------
    ssrc_map: :class:`SSRCMap`
        Who owns which SSRC.
    stats: :class:`ListenStats`
        Where counters go.
    origin: :class:`float`
        The monotonic time of the recording timeline's sample 0.
    jitter_depth: :class:`float`
        Seconds a packet waits for missing predecessors before they are declared lost
        (and the first packet after a quiet stretch waits, see :class:`.JitterBuffer`).
    hold_time: :class:`float`
        Seconds a packet may wait for its user or DAVE key before it is dropped (counted).
    max_held: :class:`int`
        Packets held per SSRC at most (older ones are dropped, counted as overflow).
    max_streams: :class:`int`
        SSRCs tracked at most; a flood of fresh SSRCs beyond this is dropped and counted.
    """

    def __init__(
        self,
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
        self._map = ssrc_map
        self.stats = stats
        self.origin = origin
        self.jitter_depth = jitter_depth
        self.hold_time = hold_time
        self.max_held = max_held
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._keys = TransportKeyRing()
        self._dave = dave.DaveReceiver(ssrc_map, stats)
        self.paused = False

    # -- on arrival ----------------------------------------------------------------------

    def set_transport(self, mode: str | None, key: bytes | bytearray | list[int] | None) -> None:
        """The voice session's transport mode and secret key (SESSION_DESCRIPTION); any thread.

        Packets that no key opened in the last :data:`~.transport_keys.KEY_GRACE` seconds are
        tried again with the new key, and the old key keeps working that long.
        """
        self._keys.set(mode, key)

    def set_dave(self, session: Any, protocol_version: int) -> None:
        """The connection's ``davey.DaveSession`` (or ``None``) and DAVE protocol version; any thread.

        Frames waiting for a key are retried at the next poll.
        """
        self._dave.set_session(session, protocol_version)

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
                if self._keys.changed:
                    for old, arrival in self._keys.take_parked(now):
                        rtp_one(old, arrival, True)
            except Exception:  # a bug must not end the engine's round (nor discord.py's thread)
                _log.exception("unexpected error handling a %d-byte datagram", len(data))
                self.stats.drop_unattributed(DropReason.malformed)
        return rtcp

    def _rtcp(self, data: bytes) -> list[RTCPPacket] | None:
        cipher = self._keys.cipher
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
        keys = self._keys
        cipher = keys.cipher
        plain = None
        if cipher is not None:
            try:
                plain = cipher.decrypt(data, aad_length)
            except DecryptionFailed:
                plain = keys.open_previous(data, aad_length, now)
        if plain is None:
            if retry:
                stats.drop_unattributed(DropReason.auth_failed)
            else:
                expired = keys.park(data, now)
                if expired:
                    stats.drop_unattributed(DropReason.auth_failed, expired)
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
            user_id = self._map.user_for(ssrc)
            if stream is None or self.paused:
                # Nothing to keep in order (a probe before any audio), or not listening now.
                self.stats.add(user_id, "padding")
                return
            # Not an arrival of audio: it must not keep a talker "speaking".
            result = stream.buffer.push(sequence, timestamp, (None, None), now)
            if not result.accepted:
                self.stats.add(user_id, "padding")
            elif result is PushResult.OVERFLOW:  # as for audio: the packet it pushed out is counted
                self.stats.add(user_id, "received")
                self.stats.drop(user_id, DropReason.overflow)

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

    # -- on release ----------------------------------------------------------------------

    def poll(self, now: float) -> tuple[list[ReceivedPacket], list[SpeakingChange]]:
        """Release what is ready: ordered, decrypted packets of every SSRC, and speaking changes.

        Call it from one thread after new packets and at :meth:`next_deadline`.
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

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`poll` next has something to do if no packet arrives meanwhile.

        A jitter buffer's release, a talker's speaking timeout, or (while packets wait for
        a key or an owner) ``now + RETRY_INTERVAL``. ``None``: nothing is held and nobody is
        speaking, so nothing happens until the next packet or gateway message.
        """
        soonest: float | None = None
        with self._lock:
            for stream in self._streams.values():
                last = stream.last_arrival
                recent = last > 0 and now - last < SPEAKING_TIMEOUT
                if stream.pending or (recent and not stream.speaking):
                    return now + RETRY_INTERVAL  # a key, an owner or a speaking start pending
                due = stream.buffer.next_deadline()
                if stream.speaking:
                    stop = last + SPEAKING_TIMEOUT
                    due = stop if due is None or stop < due else due
                if due is not None and (soonest is None or due < soonest):
                    soonest = due
        return soonest

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
        parked = self._keys.drop_parked()
        if parked:
            self.stats.drop_unattributed(DropReason.auth_failed, parked)
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
        e2ee = self._dave.e2ee
        # Straight out only where queueing could not have dropped anything (max_held).
        direct = user_id is not None and not pending and len(released) <= self.max_held
        arrivals = debursted_arrivals(released) if len(released) > 1 else None
        for k, r in enumerate(released):
            arrival = r.arrival if arrivals is None else arrivals[k]
            payload, level = r.payload
            if payload is None:
                self.stats.add(user_id, "padding")
                stream.padding.absorb(r)
                continue
            probes = stream.padding
            if probes.count:  # rare: only the packet right after a bandwidth probe pays a call
                r = probes.audio_after(r)
            probes.last_timestamp = r.timestamp
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
                lost_positions = tuple(clock.position(ts_add(first, FRAME_SAMPLES * i), arrival) for i in range(lost))
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
        opener = self._dave
        pending = stream.pending
        while pending:
            p = pending[0]
            may_wait = not final and now - p.arrival < self.hold_time
            payload = p.payload
            if opener.needs_opening(payload):
                opened = opener.open(stream.dave, stream.ssrc, user_id, payload, now, may_wait)
                if opened is None:
                    return  # its key or its owner is on the way: everything behind it waits too
                if isinstance(opened, DropReason):
                    self._drop_head(stream, opened)
                    continue
                user_id, payload = opened
            elif user_id is None and may_wait:
                # No E2EE: decodable, but a sink wants to know whose audio it is. Wait a
                # little for SPEAKING; after hold_time it goes out with user None, not lost.
                return
            pending.popleft()
            self._emit(
                stream, user_id, p.sequence, p.timestamp, payload, p.lost_positions, p.position, p.arrival,
                p.audio_level, p.new_stream, out, counts,
            )  # fmt: skip

    def take_dave_recoveries(self) -> list[int]:
        """Users whose DAVE frames kept failing since the last call (see :class:`.dave.DaveReceiver`)."""
        return self._dave.take_recoveries()

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
            lost_positions = lost_before_first(new_stream, position, payload) + lost_positions
        c = counts.get(user_id)
        if c is None:
            c = counts[user_id] = [0, 0]
        c[0] += 1
        if lost_positions:
            c[1] += len(lost_positions)
        out.append(
            ReceivedPacket(
                stream.ssrc, user_id, sequence, timestamp, payload, lost_positions, position, arrival, level, new_stream
            )
        )

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
    def parked_packets(self) -> int:
        """Packets no transport key opened yet, kept for the next key (bounded)."""
        return self._keys.parked

    @property
    def ssrcs(self) -> list[int]:
        """SSRCs currently tracked."""
        return list(self._streams)
