"""The UDP media between the emulated SFU and the bot.

:class:`BotMedia` knows where the bot's voice session receives (its transport key and UDP
address, per session), puts members' packets on their impaired path to it, reads what the
bot sends (its audio, decrypted back to Opus, and its keepalives), and sends the SFU's own
RTCP (receiver reports, feedback, the BYE only when asked). Whether the bot's address has
been silent for longer than the media timeout is :class:`.media.MediaServer`'s decision,
made when a packet is due on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..dave import is_dave_frame, is_silence
from ..rtp import MalformedPacket, build_goodbye, build_receiver_report, is_rtcp
from ..transport import DecryptionFailed
from .calls import BotSessions, EmulatorError, Hooks
from .gateway import VoiceSession
from .impairment import Impairment, ImpairmentChain, PacketImpairment
from .media import BotPacket, MediaServer, TransportLink
from .sfu import SERVER_SSRC, FeedbackKind, ReceptionStats, feedback

if TYPE_CHECKING:
    from .members import SimulatedMember
    from .settings import EmulatorSettings

__all__ = ("KEEPALIVE_LENGTH", "BotMedia")

_log = logging.getLogger(__name__)

#: Size of the UDP keepalive a receiver sends (discord.js: a counter, every 5 s).
KEEPALIVE_LENGTH = 8


class BotMedia:
    """Media to and from the bot's current voice session.

    Parameters
    ----------
    media: :class:`.media.MediaServer`
        The UDP server.
    sessions: :class:`.calls.BotSessions`
        The bot's sessions (read only here).
    impairment: :class:`.impairment.Impairment`
        The global network path to the bot, after each member's own.
    settings: :class:`.settings.EmulatorSettings`
        Its switches ``echo_keepalive`` and ``goodbye_on_close``.
    hooks: :class:`.calls.Hooks`
        Whether the emulator runs (what is sent from callbacks may come too late) and
        its state-change signal.
    decrypt_dave: Optional[Callable[[VoiceSession, bytes], tuple[bytes, Optional[str]]]]
        Opens a DAVE frame of the bot's (``None``: the emulator runs without DAVE).
    """

    def __init__(
        self,
        media: MediaServer,
        sessions: BotSessions,
        impairment: Impairment,
        *,
        settings: EmulatorSettings,
        hooks: Hooks,
        decrypt_dave: Callable[[VoiceSession, bytes], tuple[bytes, str | None]] | None,
    ) -> None:
        self.media = media
        self.sessions = sessions
        self.impairment = impairment
        self._hooks = hooks
        self._decrypt_dave = decrypt_dave
        self.echo_keepalive = settings.echo_keepalive
        self.goodbye_on_close = settings.goodbye_on_close
        #: Per session: its transport link, its UDP address, reception of its own audio.
        self.links: dict[VoiceSession, TransportLink] = {}
        self.addresses: dict[VoiceSession, tuple[str, int]] = {}
        self.reception: dict[VoiceSession, ReceptionStats] = {}
        #: What the emulator records (see its attributes of the same names).
        self.received_from_bot: list[BotPacket] = []
        self.bot_packet_errors: list[tuple[bytes, str]] = []
        self.sfu_rtcp_sent: list[tuple[float, bytes]] = []
        self.keepalives_received: list[tuple[float, bytes]] = []
        self.max_received = 100000

    # -- sessions ------------------------------------------------------------------------------

    def establish(self, session: VoiceSession) -> None:
        """The session chose its mode: seal with its (current) key from now on."""
        assert session.mode is not None
        self.links[session] = TransportLink(session.mode, session.secret_key)

    def forget(self, session: VoiceSession) -> None:
        """The session ended: nothing goes to it any more."""
        self.links.pop(session, None)
        self.addresses.pop(session, None)
        self.reception.pop(session, None)

    def last_heard(self) -> float | None:
        """``time.monotonic()`` of the last datagram from the current session's address."""
        session = self.sessions.current
        address = self.addresses.get(session) if session is not None else None
        return self.media.last_heard.get(address) if address is not None else None

    def route(self, channel_id: int | None = None) -> tuple[VoiceSession, TransportLink, tuple[str, int]]:
        """The bot session (in ``channel_id`` if given) that can receive media now."""
        self._hooks.check_running()
        session = self.sessions.current
        if session is None or (channel_id is not None and session.channel_id != channel_id):
            raise EmulatorError("the bot is not connected to this call: await server.connect() first")
        link = self.links.get(session)
        address = self.addresses.get(session)
        if link is None or address is None:
            raise EmulatorError("the bot's voice session is not established yet (no key or no UDP address)")
        return session, link, address

    # -- members' media to the bot ---------------------------------------------------------------

    def member_path(self, member: SimulatedMember) -> PacketImpairment:
        """The network between ``member`` and the bot: its own impairment, then the global one."""
        if member.impairment is None:
            return self.impairment
        return ImpairmentChain(member.impairment, self.impairment)

    def send_from(self, member: SimulatedMember, packet: bytes, send_loop_time: float) -> asyncio.Future[None] | None:
        """Put one of ``member``'s packets on the (impaired) path to the bot.

        Returns a future that completes when its first copy is on the wire, or ``None`` when
        the packet was lost or cannot be routed.
        """
        if not member.in_call:
            member.packets_unroutable += 1
            return None
        try:
            _, _, address = self.route(member.channel_id)
        except EmulatorError:
            member.packets_unroutable += 1
            return None
        member.packets_sent += 1
        deliveries = self.member_path(member).apply(packet, send_loop_time)
        if not deliveries:
            return None
        on_wire: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def sent() -> None:
            if not on_wire.done():
                on_wire.set_result(None)

        for deliver_at, data in deliveries:
            self.media.schedule(data, address, deliver_at, sent)
        return on_wire

    # -- RTCP from the SFU ---------------------------------------------------------------------

    def send_sfu_rtcp(self, clear: bytes) -> None:
        """Seal and queue one RTCP packet of the server's own (subject to the media timeout)."""
        _, link, address = self.route()
        if len(self.sfu_rtcp_sent) < self.max_received:
            self.sfu_rtcp_sent.append((time.monotonic(), clear))
        self.media.schedule(link.seal_rtcp(clear), address, asyncio.get_running_loop().time())

    def sfu_receiver_report(self) -> bytes:
        """A receiver report from the SFU, with a block about the bot's audio once it sent some."""
        session = self.sessions.current
        stats = self.reception.get(session) if session is not None else None
        blocks = [stats.report_block(session.ssrc)] if session is not None and stats is not None else []
        return build_receiver_report(SERVER_SSRC, blocks)

    async def sfu_report_loop(self, interval: float) -> None:
        """Send the bot a receiver report every ``interval`` seconds, while it has a session."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.send_sfu_rtcp(self.sfu_receiver_report())
            except EmulatorError:
                continue  # no established session to report to

    async def send_feedback(
        self, kind: FeedbackKind, *, sequences: Sequence[int], media_ssrc: int | None, fmt: int | None, fci: bytes
    ) -> bytes:
        """:meth:`.VoiceServerEmulator.send_feedback`."""
        session, _, _ = self.route()
        target = session.ssrc if media_ssrc is None else media_ssrc
        clear = feedback(kind, SERVER_SSRC, target, sequences=sequences, fmt=fmt, fci=fci)
        self.send_sfu_rtcp(clear)
        await asyncio.sleep(0)
        return clear

    def goodbye(self, session: VoiceSession, reason: str) -> None:
        """With ``goodbye_on_close`` only: an RTCP BYE for the bot's own SSRC (Discord sends none)."""
        if not self.goodbye_on_close:
            return
        link = self.links.get(session)
        address = self.addresses.get(session)
        if link is None or address is None or not self._hooks.running:
            return
        try:
            self.media.send_now(link.seal_rtcp(build_goodbye([session.ssrc], reason.encode()[:255])), address)
        except (RuntimeError, OSError) as exc:
            _log.debug("BYE to %s not sent: %s", address, exc)

    # -- media from the bot (MediaHandler) --------------------------------------------------------

    def on_ip_discovery(self, ssrc: int, address: tuple[str, int]) -> None:
        """Remember where the bot's session with ``ssrc`` receives."""
        for session in reversed(self.sessions.all):
            if session.ssrc == ssrc and not session.closed:
                self.addresses[session] = address
                _log.debug("session %s ssrc %s discovered at %s", session.token, ssrc, address)
                self._hooks.notify()
                return
        _log.debug("IP discovery for unknown ssrc %s from %s", ssrc, address)

    def on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """A datagram from the bot: a keepalive, its audio, or something unusable."""
        if len(data) == KEEPALIVE_LENGTH:
            self._on_keepalive(data, address)
            return
        session = self.sessions.current
        link = self.links.get(session) if session is not None else None
        if session is None or link is None or is_rtcp(data):
            self._bot_error(data, "no session" if session is None else ("rtcp" if is_rtcp(data) else "no key"))
            return
        try:
            header, _, payload = link.open_rtp(data)
        except (MalformedPacket, DecryptionFailed) as exc:
            self._bot_error(data, f"{type(exc).__name__}: {exc}")
            return
        if header.ssrc == session.ssrc:
            self.reception.setdefault(session, ReceptionStats()).update(
                header.sequence, header.timestamp, time.monotonic()
            )
        opus, dave, decrypted, error = payload, False, True, None
        if self._decrypt_dave is not None and session.dave_version and not is_silence(payload):
            dave = is_dave_frame(payload)
            if dave:
                opus, error = self._decrypt_dave(session, payload)
                decrypted = error is None
        packet = BotPacket(
            time.monotonic(),
            header.sequence,
            header.timestamp,
            header.ssrc,
            header.payload_type,
            header.marker,
            opus,
            dave,
            decrypted,
            error,
        )
        if len(self.received_from_bot) < self.max_received:
            self.received_from_bot.append(packet)
        self._hooks.notify()

    def _on_keepalive(self, data: bytes, address: tuple[str, int]) -> None:
        # Eight bytes can be neither RTP (12-byte header) nor RTCP (8-byte header plus a
        # 4-byte minimum of body and the rtpsize nonce): a keepalive, never an error.
        if len(self.keepalives_received) < self.max_received:
            self.keepalives_received.append((time.monotonic(), bytes(data)))
        if self.echo_keepalive and self._hooks.running:
            try:
                self.media.send_now(data, address)
            except (RuntimeError, OSError) as exc:
                _log.debug("keepalive echo to %s not sent: %s", address, exc)
        self._hooks.notify()

    def _bot_error(self, data: bytes, why: str) -> None:
        if len(self.bot_packet_errors) < 1000:
            self.bot_packet_errors.append((bytes(data[:64]), why))
        _log.debug("unusable packet from the bot: %s", why)
