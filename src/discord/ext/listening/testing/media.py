"""The UDP side of the local voice server: IP discovery, RTP/RTCP to the bot, what the bot sends.

One :class:`MediaServer` is an asyncio datagram endpoint on ``127.0.0.1``. READY names its
address, and discord.py ``connect()``\\ s its socket to exactly that address, so everything the
emulator sends to the bot leaves from this one socket.

* IP discovery: a 74-byte request ``>H 1 | >H 70 | >I ssrc | 66 zero bytes`` is answered with
  a 74-byte reply ``>H 2 | >H 70 | >I ssrc | ip ASCII from offset 8, NUL-terminated | ... |
  >H port at offset 72`` carrying the address the request came from.
* Outgoing packets go through a bounded delivery queue (a heap ordered by delivery time) so
  impairments (delay, jitter, reordering, duplicates) are real on the wire.
* Media timeout: like Discord, the server stops forwarding media to an address that has sent
  it nothing for :attr:`MediaServer.media_timeout` seconds. The check is made when a packet
  is due for delivery, not when it is queued: a packet queued while the address was alive
  but due after it went silent is withheld, as Discord would withhold it.
* :class:`TransportLink` is the transport encryption of one bot session: a
  :func:`..transport.transport_cipher` and the per-key nonce counter of the packets the
  server sends.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..rtp import RTPHeader, parse_rtp_header, split_plaintext
from ..transport import TransportCipher, transport_cipher

__all__ = (
    "DISCOVERY_LENGTH",
    "BotPacket",
    "MediaHandler",
    "MediaServer",
    "TransportLink",
    "build_discovery_reply",
    "parse_discovery_request",
)

_log = logging.getLogger(__name__)

#: Size of an IP discovery request and reply.
DISCOVERY_LENGTH = 74
_DISCOVERY = struct.Struct(">HHI")


def parse_discovery_request(data: bytes) -> int | None:
    """Return the SSRC of an IP discovery request, or ``None`` if ``data`` is not one."""
    if len(data) != DISCOVERY_LENGTH:
        return None
    kind, length, ssrc = _DISCOVERY.unpack_from(data)
    if kind != 1 or length != 70:
        return None
    return int(ssrc)


def build_discovery_reply(ssrc: int, ip: str, port: int) -> bytes:
    """The 74-byte discovery reply discord.py's ``discover_ip`` parses."""
    raw_ip = ip.encode("ascii")
    if len(raw_ip) > 63:
        raise ValueError(f"IP {ip!r} does not fit the discovery reply")
    reply = bytearray(DISCOVERY_LENGTH)
    _DISCOVERY.pack_into(reply, 0, 2, 70, ssrc)
    reply[8 : 8 + len(raw_ip)] = raw_ip
    struct.pack_into(">H", reply, DISCOVERY_LENGTH - 2, port)
    return bytes(reply)


class TransportLink:
    """Transport encryption between the server and one bot session.

    Parameters
    ----------
    mode: :class:`str`
        The selected ``*_rtpsize`` mode.
    secret_key: :class:`bytes`
        The 32-byte key of SESSION_DESCRIPTION.

    Notes
    -----
    The nonce counter starts at 0 for each key and is never reused with it; RTP and RTCP share
    it, which is what a real sender does with one key.
    """

    def __init__(self, mode: str, secret_key: bytes) -> None:
        self.mode = mode
        self.secret_key = bytes(secret_key)
        self.cipher: TransportCipher = transport_cipher(mode, self.secret_key)
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return f"<TransportLink mode={self.mode}>"

    def next_counter(self) -> int:
        """The next 32-bit nonce counter value."""
        return next(self._counter) & 0xFFFFFFFF

    def seal_rtcp(self, clear: bytes) -> bytes:
        """Encrypt a clear RTCP (compound) packet: AAD = first 8 bytes, nonce counter at the end."""
        return self.cipher.encrypt(clear[:8], clear[8:], self.next_counter())

    def open_rtp(self, packet: bytes) -> tuple[RTPHeader, bytes, bytes]:
        """Parse and decrypt an RTP packet; returns ``(header, extension body, payload)``.

        Raises
        ------
        ..rtp.MalformedPacket, ..transport.DecryptionFailed
            Not RTP, or it does not authenticate with this link's key.
        """
        header = parse_rtp_header(packet)
        plain = self.cipher.decrypt(packet, header.aad_length)
        ext, payload = split_plaintext(plain, header)
        return header, ext, payload


@dataclass(frozen=True, slots=True)
class BotPacket:
    """One packet the bot sent (``VoiceClient.send_audio_packet``), as the server read it.

    Attributes
    ----------
    arrival: :class:`float`
        ``time.monotonic()`` when it arrived.
    sequence, timestamp, ssrc, payload_type, marker:
        RTP header fields.
    opus: :class:`bytes`
        The Opus packet: DAVE-decrypted when it was a DAVE frame and a member's session could
        decrypt it, else the transport plaintext as sent.
    dave: :class:`bool`
        Whether the payload was a DAVE frame (end-to-end encrypted).
    decrypted: :class:`bool`
        Whether :attr:`opus` is the bot's Opus (transport-decrypted and, for a DAVE frame,
        DAVE-decrypted). ``False`` with :attr:`error` saying why not.
    """

    arrival: float
    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    opus: bytes
    dave: bool
    decrypted: bool
    error: str | None = None


class MediaHandler(Protocol):
    """What the emulator does with datagrams (called on the event loop)."""

    def on_ip_discovery(self, ssrc: int, address: tuple[str, int]) -> None:
        """The bot with ``ssrc`` sent IP discovery from ``address``."""

    def on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """Any other datagram (RTP/RTCP from the bot, or garbage)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: MediaServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after the bot closed its socket: expected on teardown.
        _log.debug("UDP error: %s", exc)


class MediaServer:
    """The emulator's UDP socket with a bounded, time-ordered delivery queue.

    Parameters
    ----------
    handler: :class:`MediaHandler`
        Receives discovery requests and datagrams.
    host: :class:`str`
        Address to bind (loopback).
    max_pending: :class:`int`
        Most packets waiting for their delivery time; more are dropped and counted in
        :attr:`dropped_overflow` (a test that floods must not eat the machine's memory).
    burst: :class:`int`
        Packets sent back to back before the sender pauses for ``burst_pause`` seconds.
        Due packets are never held longer than that, but a flood (a fast spurt) is spread
        out enough that the receiver's thread gets the GIL and its kernel buffer (about
        200 datagrams by default) does not overflow: the loss a test sees is the one it
        asked for.
    burst_pause: :class:`float`
        See ``burst``.
    media_timeout: Optional[:class:`float`]
        Seconds of silence from an address after which media scheduled for it
        (``schedule(..., media=True)``) is withheld instead of sent, counted in
        :attr:`withheld`; any datagram from that address resumes delivery at once.
        ``None``: never withhold.

    Attributes
    ----------
    last_heard: dict[tuple[:class:`str`, :class:`int`], :class:`float`]
        ``time.monotonic()`` of the last datagram from each address.
    withheld: :class:`int`
        Media datagrams not sent because their address was silent for ``media_timeout``.
    """

    def __init__(
        self,
        handler: MediaHandler,
        *,
        host: str = "127.0.0.1",
        max_pending: int = 20000,
        burst: int = 8,
        burst_pause: float = 0.001,
        media_timeout: float | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if not 0 <= burst_pause <= 1:
            raise ValueError(f"burst_pause must be 0..1 seconds, got {burst_pause!r}")
        if media_timeout is not None and not media_timeout > 0:
            raise ValueError(f"media_timeout must be positive seconds or None, got {media_timeout!r}")
        self.media_timeout = media_timeout
        self.last_heard: dict[tuple[str, int], float] = {}
        self.withheld = 0
        self.burst = burst
        self.burst_pause = burst_pause
        self.handler = handler
        self.host = host
        self.port = 0
        self.max_pending = max_pending
        self._transport: asyncio.DatagramTransport | None = None
        self._heap: list[tuple[float, int, bytes, tuple[str, int], Callable[[], None] | None, bool]] = []
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sender: asyncio.Task[None] | None = None
        # Loop time before which nothing scheduled goes out (see stall).
        self._stall_until = float("-inf")
        self._stall_spacing = 0.0
        #: Counters, for tests and logs.
        self.sent = 0
        self.received = 0
        self.dropped_overflow = 0

    async def start(self) -> None:
        """Bind the socket and start the delivery task."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(self.host, 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._sender = loop.create_task(self._deliver_loop(), name="voice-emulator-udp-sender")
        _log.debug("media server on udp://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        """Stop delivering, drop what is pending, close the socket."""
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except asyncio.CancelledError:
                pass
            self._sender = None
        self._heap.clear()
        self._idle.set()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        self.last_heard[addr] = time.monotonic()
        ssrc = parse_discovery_request(data)
        try:
            if ssrc is not None:
                self.send_now(build_discovery_reply(ssrc, addr[0], addr[1]), addr)
                self.handler.on_ip_discovery(ssrc, addr)
            else:
                self.handler.on_datagram(data, addr)
        except Exception:  # a bad datagram must never stop the endpoint
            _log.exception("handling a datagram from %s failed", addr)

    def send_now(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram immediately (discovery replies, injected faults)."""
        if self._transport is None:
            raise RuntimeError("the media server is not running")
        self._transport.sendto(data, addr)
        self.sent += 1

    def schedule(
        self,
        data: bytes,
        addr: tuple[str, int],
        deliver_at: float,
        on_sent: Callable[[], None] | None = None,
        *,
        media: bool = True,
    ) -> bool:
        """Queue ``data`` for delivery at loop time ``deliver_at``; ``False`` if the queue is full.

        ``on_sent`` is called when the packet leaves the queue (sent, or withheld by the media
        timeout). ``media=False`` exempts it from the media timeout.
        """
        if len(self._heap) >= self.max_pending:
            self.dropped_overflow += 1
            return False
        heapq.heappush(self._heap, (deliver_at, next(self._order), data, addr, on_sent, media))
        self._idle.clear()
        self._wakeup.set()
        return True

    def stall(self, seconds: float, spacing: float = 0.0) -> None:
        """Send nothing scheduled for the next ``seconds``, then the backlog, ``spacing``
        seconds apart (``0``: at once, paced by ``burst``): a link that stalls and then
        delivers what it held up, late and bunched. Datagrams sent with :meth:`send_now`
        are not held."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 30:
            raise ValueError(f"seconds must be within (0, 30], got {seconds!r}")
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not 0 <= spacing <= 0.02:
            raise ValueError(f"spacing must be 0..0.02 seconds, got {spacing!r}")
        loop = asyncio.get_running_loop()
        self._stall_until = max(self._stall_until, loop.time() + seconds)
        self._stall_spacing = float(spacing)
        self._wakeup.set()

    def is_silent(self, addr: tuple[str, int]) -> bool:
        """Whether media to ``addr`` is withheld now: nothing heard from it for ``media_timeout``."""
        if self.media_timeout is None:
            return False
        heard = self.last_heard.get(addr)
        return heard is None or time.monotonic() - heard > self.media_timeout

    @property
    def pending(self) -> int:
        """Packets waiting for their delivery time."""
        return len(self._heap)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued packet has been sent.

        Raises
        ------
        asyncio.TimeoutError
            Still packets pending after ``timeout`` seconds.
        """
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _deliver_loop(self) -> None:
        loop = asyncio.get_running_loop()
        in_burst = 0
        while True:
            if not self._heap:
                self._idle.set()
                self._wakeup.clear()
                in_burst = 0
                await self._wakeup.wait()
                continue
            if in_burst >= self.burst:
                in_burst = 0
                await asyncio.sleep(self.burst_pause)
                continue
            delay = max(self._heap[0][0], self._stall_until) - loop.time()
            if delay > 0:
                in_burst = 0
                self._wakeup.clear()
                try:
                    # A newly scheduled, earlier packet wakes us before the timeout.
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    pass
                continue
            due, _, data, addr, on_sent, media = heapq.heappop(self._heap)
            in_burst += 1
            if media and self.is_silent(addr):
                self.withheld += 1
            elif self._transport is not None:
                try:
                    self._transport.sendto(data, addr)
                    self.sent += 1
                except OSError as exc:  # pragma: no cover - loopback sendto rarely fails
                    _log.debug("sendto %s failed: %s", addr, exc)
            if on_sent is not None:
                try:
                    on_sent()
                except Exception:
                    _log.exception("on_sent callback failed")
            if due < self._stall_until and self._stall_spacing:
                await asyncio.sleep(self._stall_spacing)  # held up by a stall: the backlog drains
