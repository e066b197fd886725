"""A local Discord voice server that unmodified discord.py connects to, with real DAVE.

:class:`VoiceServerEmulator` plays Discord's side of a voice call on ``127.0.0.1``:

* the main gateway's voice part (op 4 -> VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE), through
  a real :class:`discord.Client` with no token (:mod:`.harness`);
* the voice websocket (:mod:`.gateway`): HELLO, IDENTIFY/READY, SELECT_PROTOCOL/
  SESSION_DESCRIPTION, heartbeats, RESUME, SPEAKING, client connect/disconnect, DAVE;
* the UDP media server (:mod:`.media`): IP discovery, members' RTP and RTCP to the bot
  through a seeded network impairment, and what the bot sends, decrypted back to Opus;
* simulated members (:class:`SimulatedMember`) that are real DAVE group members
  (``LocalDaveMember``, a ``davey.DaveSession`` reacting like discord.py) and speak real
  Opus (:class:`.speech.RTPSender`).

:class:`VoiceServerEmulator` is the facade; the work is done by collaborators, each given
what it needs: :mod:`.sessions` (the bot's voice sessions and the gateway),
:mod:`.members` (who is in which call), :mod:`.speaking` (members' spurts),
:mod:`.bot_media` (media to and from the bot), :mod:`.dave_routing` (DAVE) and
:mod:`.faults` (what tests inject).

By default it does what Discord does where a receiver can tell, even when that is unkind:
media stops after 30 s of UDP silence from the bot, audio SSRCs come by op 5 only, members
probe bandwidth with padding-only packets, no RTCP BYE, the SFU sends receiver reports and
members' sender reports never arrive. Each has a constructor switch for focused tests (see
:class:`VoiceServerEmulator` and docs/discord-behaviours.md).

Example
-------
.. code-block:: python3

    async with VoiceServerEmulator(seed=1) as server:
        alice = await server.add_member(1001, "alice")
        vc = await server.connect()
        await alice.speak(speechlike(1.0), realtime=False)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord

from .. import _discord
from .bot_media import KEEPALIVE_LENGTH
from .calls import EmulatorError
from .faults import FaultKind, inject
from .gateway import GatewayEvent, VoiceGatewayConnection, VoiceSession
from .harness import ClientHarness
from .impairment import PacketImpairment
from .media import BotPacket
from .members import SimulatedMember
from .probing import DEFAULT_BURST_SIZE
from .sfu import FeedbackKind
from .speech import SenderClock
from .wiring import new_harness, wire

if TYPE_CHECKING:
    from .dave_messages import DaveMessage

__all__ = ("KEEPALIVE_LENGTH", "EmulatorError", "FaultKind", "SimulatedMember", "VoiceServerEmulator")

_log = logging.getLogger(__name__)

_DEFAULT_GUILD_ID = 900000000000000001
_DEFAULT_CHANNEL_ID = 900000000000000010
_DEFAULT_OTHER_CHANNEL_ID = 900000000000000011
_DEFAULT_BOT_ID = 900000000000000100


class VoiceServerEmulator:
    """A Discord voice server on ``127.0.0.1`` for an unmodified discord.py client.

    Use as an async context manager; it starts the voice websocket server, the UDP media
    server and a token-less :class:`discord.Client` (:attr:`client`) whose guild
    (:attr:`guild`) holds two voice channels (:attr:`channel`, :attr:`other_channel`).

    Its defaults are Discord's behaviour, not the easiest one for a receiver: a test that
    passes only because the emulator is kinder than Discord proves nothing. The switches
    ``media_timeout``, ``echo_keepalive``, ``ssrc_in_client_connect``, ``padding_bursts``,
    ``goodbye_on_close``, ``rtcp_interval`` and ``sfu_report_interval`` turn a behaviour off
    or tune it for a focused test (docs/discord-behaviours.md lists them with their sources).

    Parameters
    ----------
    dave: :class:`bool`
        Run DAVE (protocol version 1, real MLS through davey) or version 0 (transport only).
    modes: Sequence[:class:`str`]
        Transport encryption modes offered in READY, in the server's order of preference.
        discord.py picks the first one that is in its ``VoiceClient.supported_modes``.
    seed: Optional[:class:`int`]
        Seeds every random choice (SSRCs, keys, initial RTP numbers, impairment).
    loss, burst_loss, reorder, duplicate, jitter, delay:
        The global network impairment on the path to the bot, shared by all members (see
        :class:`.impairment.Impairment`).
    guild_id, channel_id, other_channel_id, bot_user_id: :class:`int`
        Ids of the emulated guild, its two voice channels and the bot user.
    bot_name: :class:`str`
        The bot's user name.
    speaking_before: :class:`bool`
        Default of :meth:`SimulatedMember.speak`'s ``speaking_event``: ``"before"`` when
        true, ``"after"`` otherwise.
    heartbeat_interval: :class:`float`
        Seconds announced in HELLO (discord.py heartbeats every ``min(interval, 5)``).
    answer_delay: :class:`float`
        How long the fake main gateway waits before answering op 4 (discord.py must already
        be waiting for the events when they arrive).
    rtcp_interval: Optional[:class:`float`]
        Seconds between RTCP sender reports of members with a webrtc clock. ``None`` (the
        default): none, because Discord may never forward members' sender reports; tests of
        sender reports pass it (or call :meth:`SimulatedMember.send_sender_report`).
    sfu_report_interval: Optional[:class:`float`]
        Seconds between the RTCP receiver reports (payload type 201) the server itself sends
        the bot, as Discord's SFU does: from :data:`.sfu.SERVER_SSRC`, with one report block
        about the bot's own SSRC once the bot sent audio (none before), transport-sealed
        like all RTCP and withheld like media after ``media_timeout``. Default 5; ``None``:
        none. Feedback (205/206) goes out only when a test calls :meth:`send_feedback`.
    resume_session_description: :class:`bool`
        After RESUMED, send SESSION_DESCRIPTION again on the new websocket. discord.py 2.7.1
        waits for a secret key on *every* new voice websocket, a resumed one included, and
        times out without it; this is on so that a 4015 close really resumes.
    require_dave: Optional[:class:`bool`]
        Close with 4017 when a client that cannot do DAVE identifies (Discord does since
        2026-03). Default: the value of ``dave``.
    goodbye_on_close: :class:`bool`
        Send the bot an RTCP BYE for its own SSRC when its voice session ends or it closes
        its voice websocket (not after a 4015 close: that session goes on). Discord sends no
        BYE, on close or on a move, so this is off; it exists for tests of this switch only.
        Without a BYE, discord.py's SocketReader thread, blocked in ``select()`` on a socket
        discord.py replaced (a move) or closed, only wakes on the next datagram to it or
        after 30 s: a receiver must not count on being woken.
    media_timeout: Optional[:class:`float`]
        Discord stops forwarding media to a client whose UDP address has sent it nothing for
        a while; so does the emulator: members' RTP and RTCP and its own SFU reports to the
        bot are withheld (counted in :attr:`media_withheld`) while the bot's address has sent
        no datagram for this many seconds (IP discovery, keepalives, its own audio: anything
        counts; :attr:`bot_last_heard` says when it last did). The next datagram from the bot
        resumes forwarding at once. Checked when a packet is due on the wire, so packets
        already queued are withheld too. Default 30 s; ``None``: off.
    ssrc_in_client_connect: :class:`bool`
        Send op 12 (CLIENT_CONNECT with ``audio_ssrc``) for every member, as the emulator
        once did. Discord sends op 12 only for members with video (``add_member(video=True)``)
        and gives audio SSRCs through op 5 SPEAKING: when a member starts speaking, and at
        the bot's connection start for members with a speaking state. Off by default; only
        a test of this switch should turn it on.
    padding_bursts: Optional[:class:`float`]
        Members with a webrtc clock probe bandwidth as libwebrtc does: bursts of
        ``padding_burst_size`` padding-only RTP packets on their audio SSRC (payload type
        120, P bit, payload all padding, consecutive sequence numbers that the audio after
        the burst continues from, the last audio packet's timestamp repeated), sent between
        two frames of a spurt through the member's impaired path, transport-encrypted and
        never DAVE-encrypted. This is the mean seconds of a member's talk between bursts:
        gaps are drawn (seeded) from 0.5..1.5 times it, so with the default 20 every
        member who talks 30 s probes at least once, and never before its first audio
        packet. ``None``: only bursts asked for with ``speak(padding_burst_at=...)``.
        Bursts are recorded in the member's :class:`.speech.SpurtRecord` (``padding_bursts``).
    padding_burst_size: :class:`int`
        Packets in a burst (1..1000, default 50; real bursts have 50 or more).
    echo_keepalive: :class:`bool`
        Send each 8-byte keepalive datagram from the bot straight back to it, unchanged. Some
        Discord voice servers echo keepalives and some never do; off by default so that a
        receiver never relies on an echo. Keepalives are counted in
        :attr:`keepalives_received` either way (never in :attr:`bot_packet_errors`).
    """

    def __init__(
        self,
        *,
        dave: bool = True,
        modes: Sequence[str] = ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"),
        seed: int | None = None,
        loss: float = 0.0,
        burst_loss: tuple[float, float] | None = None,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        jitter: float = 0.0,
        delay: float = 0.0,
        guild_id: int = _DEFAULT_GUILD_ID,
        channel_id: int = _DEFAULT_CHANNEL_ID,
        other_channel_id: int = _DEFAULT_OTHER_CHANNEL_ID,
        bot_user_id: int = _DEFAULT_BOT_ID,
        bot_name: str = "listener",
        speaking_before: bool = True,
        heartbeat_interval: float = 13.75,
        answer_delay: float = 0.02,
        rtcp_interval: float | None = None,
        resume_session_description: bool = True,
        require_dave: bool | None = None,
        goodbye_on_close: bool = False,
        media_timeout: float | None = 30.0,
        echo_keepalive: bool = False,
        ssrc_in_client_connect: bool = False,
        padding_bursts: float | None = 20.0,
        padding_burst_size: int = DEFAULT_BURST_SIZE,
        sfu_report_interval: float | None = 5.0,
    ) -> None:
        # Checks the arguments once (EmulatorSettings) and builds the collaborators (.wiring).
        w = wire(self, **{name: value for name, value in locals().items() if name != "self"})
        self._settings = s = w.settings
        # The settings as attributes, as they always were (tests and the gateway read them).
        self.guild_id, self.channel_id, self.other_channel_id = s.guild_id, s.channel_id, s.other_channel_id
        self.bot_user_id, self.bot_name, self.seed, self.modes = s.bot_user_id, s.bot_name, s.seed, s.modes
        self.dave_enabled, self.require_dave, self.speaking_before = s.dave, s.require_dave, s.speaking_before
        self.answer_delay, self.rtcp_interval = s.answer_delay, s.rtcp_interval
        self.sfu_report_interval, self.goodbye_on_close = s.sfu_report_interval, s.goodbye_on_close
        self.resume_session_description = s.resume_session_description
        self.echo_keepalive, self.ssrc_in_client_connect = s.echo_keepalive, s.ssrc_in_client_connect
        self.padding_bursts, self.padding_burst_size = s.padding_bursts, s.padding_burst_size
        self._rng = w.rng
        #: The global impairment (the bot's uplink): every member's packets go through it.
        self.impairment = w.impairment
        self.gateway, self.media = w.gateway, w.media
        self._harness: ClientHarness | None = None
        self._calls, self.members, self._ssrcs, self._bot, self._hooks = w.calls, w.members, w.ssrcs, w.bot, w.hooks
        self._wall0 = self._mono0 = 0.0
        self._dave, self._media, self._presence = w.dave, w.bot_media, w.presence
        self._speaker, self._control = w.speaker, w.control
        #: Every packet the bot sent, decrypted (transport and DAVE) back to Opus.
        self.received_from_bot: list[BotPacket] = self._media.received_from_bot
        #: Datagrams from the bot that did not parse or authenticate.
        self.bot_packet_errors: list[tuple[bytes, str]] = self._media.bot_packet_errors
        #: RTCP the server itself sent the bot (receiver reports, feedback), ``(time.monotonic(),
        #: clear packet)``, whether or not the media timeout withheld it (bounded).
        self.sfu_rtcp_sent: list[tuple[float, bytes]] = self._media.sfu_rtcp_sent
        #: The bot's 8-byte UDP keepalives, ``(time.monotonic(), datagram)``, oldest first (bounded).
        self.keepalives_received: list[tuple[float, bytes]] = self._media.keepalives_received
        #: SPEAKING (op 5) payloads the bot sent.
        self.bot_speaking: list[dict[str, Any]] = []
        #: The DAVE messages routed, ``(direction, user_id, op)``; for tests and logs.
        self.dave_log: list[tuple[str, int, int]] = self._dave.log if self._dave is not None else []
        #: DAVE messages the group server or a simulated member rejected, with the error.
        self.dave_errors: list[tuple[DaveMessage, Exception]] = self._dave.errors if self._dave is not None else []

    @property
    def max_received(self) -> int:
        """Bound of the records of what the bot sent (:attr:`received_from_bot` and the like)."""
        return self._media.max_received

    @max_received.setter
    def max_received(self, value: int) -> None:
        self._media.max_received = value

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> VoiceServerEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the servers and the client (``async with`` does this).

        Raises
        ------
        EmulatorError
            Started twice or after :meth:`close`.
        """
        if self._hooks.running or self._hooks.closed:
            raise EmulatorError("an emulator starts once; create a new one")
        loop = asyncio.get_running_loop()
        self._wall0, self._mono0 = time.time(), loop.time()
        await self.gateway.start()
        await self.media.start()
        self._harness = new_harness(self._settings, self.gateway, self._control)
        await self._harness.start()
        self._hooks.running = True
        if self.rtcp_interval is not None:
            self._hooks.spawn(self._speaker.rtcp_loop(self.rtcp_interval), "rtcp")
        if self.sfu_report_interval is not None:
            self._hooks.spawn(self._media.sfu_report_loop(self.sfu_report_interval), "sfu-rtcp")
        _log.info(
            "voice emulator up: ws://%s udp %s dave=%s", self.gateway.endpoint, self.media.port, self.dave_enabled
        )

    async def close(self) -> None:
        """Tear everything down: the client (and its voice client), tasks, sockets."""
        if self._hooks.closed:
            return
        self._hooks.closed = True
        if self._harness is not None:
            await self._harness.close()
        await self._hooks.stop()
        await self.gateway.stop()
        await self.media.stop()
        _log.info("voice emulator closed")

    async def wait_until(self, predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` is true, re-checking on every state change and every 20 ms.

        Raises
        ------
        asyncio.TimeoutError
            With ``what`` in the message, when it stays false for ``timeout`` seconds.
        """
        await self._hooks.wait_until(predicate, timeout=timeout, what=what)

    # -- what tests read ------------------------------------------------------------------------

    @property
    def harness(self) -> ClientHarness:
        """The :class:`.harness.ClientHarness` owning the client."""
        if self._harness is None:
            raise EmulatorError("the emulator is not started")
        return self._harness

    @property
    def client(self) -> discord.Client:
        """The real, token-less :class:`discord.Client` attached to the emulator."""
        return self.harness.client

    @property
    def guild(self) -> discord.Guild:
        """The emulated guild, from the client's cache."""
        return self.harness.guild

    @property
    def channel(self) -> discord.VoiceChannel:
        """The default voice channel."""
        return self._voice_channel(self.channel_id)

    @property
    def other_channel(self) -> discord.VoiceChannel:
        """The second voice channel (for move tests)."""
        return self._voice_channel(self.other_channel_id)

    def _voice_channel(self, channel_id: int) -> discord.VoiceChannel:
        channel = self.guild.get_channel(channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        return channel

    @property
    def voice_client(self) -> discord.VoiceProtocol | None:
        """The client's voice client in the guild, if any."""
        return self.guild.voice_client

    @property
    def session(self) -> VoiceSession | None:
        """The bot's current voice session on the server side (``None`` when not in voice)."""
        return self._bot.current

    @property
    def sessions(self) -> list[VoiceSession]:
        """Every voice session the bot ever had, oldest first."""
        return list(self._bot.all)

    @property
    def events(self) -> list[GatewayEvent]:
        """Every voice gateway frame so far, both directions (bounded)."""
        return self.gateway.events

    def ops_received(self, op: int) -> list[GatewayEvent]:
        """Frames with ``op`` the bot sent to the server."""
        return [e for e in self.gateway.events if e.direction == "recv" and e.op == op]

    def ops_sent(self, op: int) -> list[GatewayEvent]:
        """Frames with ``op`` the server sent to the bot."""
        return [e for e in self.gateway.events if e.direction == "send" and e.op == op]

    async def wait_for_op(
        self, op: int, *, direction: str = "recv", after: int = 0, timeout: float = 10.0
    ) -> GatewayEvent:
        """Wait for a gateway frame (``direction`` ``"recv"``: from the bot; ``"send"``: to it)."""
        return await self.gateway.wait_for(direction, op, after=after, timeout=timeout)

    @property
    def media_timeout(self) -> float | None:
        """Seconds of UDP silence from the bot after which media to it is withheld (``None``: never)."""
        return self.media.media_timeout

    @property
    def media_withheld(self) -> int:
        """Datagrams (members' RTP/RTCP, SFU RTCP) withheld because the bot's address was silent."""
        return self.media.withheld

    @property
    def bot_last_heard(self) -> float | None:
        """``time.monotonic()`` of the last datagram from the bot's current UDP address, if any."""
        return self._media.last_heard()

    def member(self, user_id: int) -> SimulatedMember:
        """The simulated member with ``user_id``.

        Raises
        ------
        EmulatorError
            No such member.
        """
        try:
            return self.members[user_id]
        except KeyError:
            raise EmulatorError(f"no simulated member with user id {user_id}; add it with add_member()") from None

    # -- clocks ----------------------------------------------------------------------------------

    def sender_now(self) -> float:
        """Senders' clock: Unix time, advancing with the event loop's monotonic clock."""
        return self._wall0 + (asyncio.get_running_loop().time() - self._mono0)

    def _to_loop_time(self, sender_time: float) -> float:
        # Tests use it too: when a sender-clock time happens on the event loop's clock.
        return sender_time - self._wall0 + self._mono0

    # -- members -------------------------------------------------------------------------------

    async def add_member(
        self,
        user_id: int,
        name: str | None = None,
        *,
        impairment: PacketImpairment | None = None,
        clock: str | SenderClock = "webrtc",
        sequence: int | None = None,
        timestamp: int | None = None,
        join: bool = True,
        channel: discord.abc.Snowflake | None = None,
        ssrc: int | None = None,
        video: bool = False,
    ) -> SimulatedMember:
        """Add a simulated member to the guild and (by default) to the call.

        Parameters
        ----------
        user_id: :class:`int`
            The member's user id (not the bot's, not taken).
        name: Optional[:class:`str`]
            User name; ``"member-<id>"`` by default.
        impairment: Optional[:class:`.impairment.Impairment`]
            This member's own network path, applied before the global one.
        clock: :class:`str`
            ``"webrtc"`` (Discord's clients) or ``"discordpy"`` (a bot) sender behaviour.
        sequence, timestamp: Optional[:class:`int`]
            First RTP sequence number / timestamp (random by default; e.g. 65530 to cross
            the wrap early).
        join: :class:`bool`
            Join the call now (CLIENTS_CONNECT to the bot, DAVE Add -> new epoch).
        channel: Optional[:class:`discord.VoiceChannel`]
            The channel to join (default :attr:`channel`).
        ssrc: Optional[:class:`int`]
            Force the audio SSRC (random by default).
        video: :class:`bool`
            The member has video state: the bot gets op 12 (CLIENT_CONNECT with its audio and
            video SSRCs) for it, at connection start and when it joins. Without video the
            bot learns its audio SSRC from op 5 only, as on Discord.

        Raises
        ------
        ValueError
            Bad id, clock, sequence, timestamp or ssrc.
        EmulatorError
            The id is the bot's or already used, or the emulator is not running.
        """
        return await self._presence.add(
            self,
            user_id,
            name,
            impairment=impairment,
            clock=clock,
            sequence=sequence,
            timestamp=timestamp,
            join=join,
            channel=channel,
            ssrc=ssrc,
            video=video,
        )

    # -- the bot -------------------------------------------------------------------------------

    async def connect(
        self,
        cls: Any = discord.VoiceClient,
        *,
        channel: discord.VoiceChannel | None = None,
        timeout: float = 10.0,
        wait_dave: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Connect the bot with the real ``channel.connect(cls=cls)`` and return its voice client.

        Parameters
        ----------
        cls:
            The :class:`discord.VoiceClient` (sub)class to connect with.
        channel: Optional[:class:`discord.VoiceChannel`]
            Where to connect (default :attr:`channel`).
        timeout: :class:`float`
            discord.py's connect timeout.
        wait_dave: :class:`bool`
            With DAVE on, also wait until the DAVE group settled (:meth:`wait_dave_ready`)
            before returning.
        **kwargs:
            Passed to ``channel.connect`` (``reconnect``, ``self_deaf``, ``self_mute``).

        Raises
        ------
        EmulatorError
            The bot is already connected.
        asyncio.TimeoutError
            discord.py did not complete its handshake (or DAVE did not settle) in time.
        """
        self._hooks.check_running()
        if self.guild.voice_client is not None:
            raise EmulatorError("the bot is already connected; disconnect it or use move_bot()")
        target = channel or self.channel
        if target.guild.id != self.guild_id or target.id not in self._calls:
            raise ValueError(f"{target!r} is not a voice channel of the emulated guild")
        vc = await target.connect(cls=cls, timeout=timeout, **kwargs)
        if wait_dave and self.dave_enabled:
            await self.wait_dave_ready(timeout=timeout)
        return vc

    async def wait_dave_ready(self, *, timeout: float = 10.0) -> None:
        """Wait until the DAVE group of the bot's call has settled.

        Settled means: no transition pending, and the bot and every member in the call are
        in the group with ready sessions at the group's epoch. A bot alone in the call has
        no group (DAVE's sole-member state): then it is enough that its key package arrived.

        Raises
        ------
        EmulatorError
            DAVE is off.
        asyncio.TimeoutError
            The group did not settle in time.
        """
        if not self.dave_enabled:
            raise EmulatorError("DAVE is off in this emulator (dave=False)")
        await self.wait_until(self._dave_settled, timeout=timeout, what="the DAVE group to settle")

    def _dave_settled(self) -> bool:
        channel_id = self._bot.channel_id
        if channel_id is None or self._dave is None:
            return False
        vc = self.guild.voice_client
        session = _discord.dave_state(vc)[0] if isinstance(vc, discord.VoiceClient) else None
        return self._dave.settled(self._calls[channel_id], session)

    # -- what a moderator or a voice server does -----------------------------------------------------

    async def close_voice(self, code: int, reason: str = "") -> None:
        """Close the bot's voice websocket with ``code``.

        4015 (voice server crashed) makes discord.py resume; 4014 / 4022 mean disconnected
        (discord.py waits for a move, then gives up); other codes make it reconnect.
        Codes after which Discord would not accept a RESUME also end the server session.

        Raises
        ------
        ValueError
            ``code`` is not a valid websocket close code.
        EmulatorError
            The bot has no open voice websocket.
        """
        await self._control.close_voice(code, reason)

    async def kick_bot(self) -> None:
        """Disconnect the bot as a moderator would: VOICE_STATE_UPDATE with no channel, close 4014.

        Raises
        ------
        EmulatorError
            The bot is not in voice.
        """
        await self._control.kick()

    async def move_bot(self, channel: discord.abc.Snowflake) -> None:
        """Move the bot to another voice channel as a moderator would.

        The server sends VOICE_STATE_UPDATE (new channel) and VOICE_SERVER_UPDATE (new token)
        and closes the old voice websocket with 4014; discord.py reconnects to a new session.

        Raises
        ------
        ValueError
            Not a voice channel of the emulated guild.
        EmulatorError
            The bot is not in voice, or already in that channel.
        """
        self._hooks.check_running()
        if channel.id not in self._calls:
            raise ValueError(f"{channel!r} is not a voice channel of the emulated guild")
        await self._control.move(channel.id)

    async def new_session_key(self) -> bytes:
        """Rotate the transport key: SESSION_DESCRIPTION with a new secret key (same mode).

        Returns the new key. Packets already in flight were sealed with the old key.

        Raises
        ------
        EmulatorError
            The bot's session is not established.
        """
        return await self._control.new_session_key()

    # -- faults and feedback -----------------------------------------------------------------------

    def delay_dave_to_bot(self, seconds: float) -> None:
        """Fault: DAVE messages to the bot take ``seconds`` longer on their way, in order.

        A congested websocket: members that already switched to a new epoch send media the
        bot cannot open until its commit or welcome arrives (its first words must wait for
        the key, not be lost). ``0`` ends the fault for messages sent from then on.

        Raises
        ------
        ValueError
            ``seconds`` is not 0..30.
        EmulatorError
            DAVE is off.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 30:
            raise ValueError(f"seconds must be 0..30, got {seconds!r}")
        if self._dave is None:
            raise EmulatorError("DAVE is off in this emulator (dave=False)")
        self._dave.bot_delay = float(seconds)

    def stall_media_to_bot(self, seconds: float, *, spacing: float = 0.0) -> None:
        """Fault: the network to the bot stalls for ``seconds``, then delivers the backlog.

        Every datagram due to reach the bot meanwhile (media, RTCP, probes) waits, then
        arrives in order, ``spacing`` seconds apart (``0``: in one burst), as a congested or
        roaming link delivers it: late and bunched, with nothing lost. The members keep
        talking at their own pace throughout.

        Raises
        ------
        ValueError
            ``seconds`` is not within (0, 30], or ``spacing`` not within 0..0.02.
        """
        self.media.stall(seconds, spacing)

    async def inject(
        self,
        kind: FaultKind,
        *,
        member: SimulatedMember | None = None,
        ssrc: int | None = None,
        count: int = 1,
        size: int | None = None,
        payload: bytes | None = None,
        payload_type: int = 103,
    ) -> list[bytes]:
        """Send hostile or foreign datagrams to the bot now (no impairment) and return them.

        Parameters
        ----------
        kind: :class:`str`
            ``"garbage"``: random bytes (``size``); ``"wrong_tag"``: a real audio packet of
            ``member`` whose tag does not verify; ``"unknown_ssrc"``: valid encrypted Opus
            from an SSRC nobody announced (``ssrc`` or random); ``"video"``: a valid
            encrypted packet with ``payload_type`` (default 103) on ``member``'s video SSRC
            (or ``ssrc``); ``"raw"``: ``payload`` as is.
        count: :class:`int`
            How many (1..10000).

        Raises
        ------
        ValueError
            Unknown kind, bad count, or the arguments the kind needs are missing.
        EmulatorError
            The bot is not connected (nowhere to send).
        """
        return await inject(
            self._media,
            kind,
            rng=self._rng,
            new_ssrc=self._ssrcs.new,
            member=member,
            ssrc=ssrc,
            count=count,
            size=size,
            payload=payload,
            payload_type=payload_type,
        )

    async def send_feedback(
        self,
        kind: FeedbackKind,
        *,
        sequences: Sequence[int] = (),
        media_ssrc: int | None = None,
        fmt: int | None = None,
        fci: bytes = b"",
    ) -> bytes:
        """Send the bot an RTCP feedback packet from the SFU now; returns it in clear.

        Parameters
        ----------
        kind: :class:`str`
            ``"nack"``: generic NACK (payload type 205, FMT 1) for ``sequences``; ``"pli"``:
            picture loss indication (206, FMT 1, no FCI); ``"rtpfb"`` / ``"psfb"``: any
            205 / 206 message with ``fmt`` and ``fci`` as given.
        sequences: Sequence[:class:`int`]
            The sequence numbers a NACK asks for again.
        media_ssrc: Optional[:class:`int`]
            The stream the feedback is about (default: the bot's own SSRC).
        fmt: Optional[:class:`int`]
            FMT (0..31) of an ``"rtpfb"`` / ``"psfb"`` message.
        fci: :class:`bytes`
            Feedback control information of an ``"rtpfb"`` / ``"psfb"`` message (whole words).

        Raises
        ------
        ValueError
            Unknown kind, or the arguments the kind needs are missing or invalid.
        EmulatorError
            The bot's session is not established.

        Notes
        -----
        Like media, it is withheld while the bot's address is silent (``media_timeout``).
        """
        return await self._media.send_feedback(kind, sequences=sequences, media_ssrc=media_ssrc, fmt=fmt, fci=fci)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every packet scheduled for the bot has been put on the wire."""
        await self.media.drain(timeout)

    # -- media from the bot (MediaHandler) ----------------------------------------------------------

    def on_ip_discovery(self, ssrc: int, address: tuple[str, int]) -> None:
        """:class:`.media.MediaHandler`: remember where the bot's session receives."""
        self._media.on_ip_discovery(ssrc, address)

    def on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """:class:`.media.MediaHandler`: a packet from the bot."""
        self._media.on_datagram(data, address)

    # -- the voice gateway (GatewayHandler) -------------------------------------------------------

    @property
    def udp_port(self) -> int:
        """:class:`.gateway.GatewayHandler`: the port READY announces."""
        return self.media.port

    def authenticate(self, identify: dict[str, Any]) -> VoiceSession:
        """:class:`.gateway.GatewayHandler`: IDENTIFY names one of our sessions."""
        return self._control.authenticate(identify)

    def authenticate_resume(self, resume: dict[str, Any]) -> VoiceSession:
        """:class:`.gateway.GatewayHandler`: RESUME names a live, identified session."""
        return self._control.authenticate_resume(resume)

    async def on_protocol_selected(self, session: VoiceSession) -> None:
        """:class:`.gateway.GatewayHandler`: announce the call and start DAVE for the bot.

        Op 11 names everyone in the call; op 12 goes only for members with video; op 5
        (``speaking: 1``) for every member with a speaking state: that is how the bot learns
        the audio SSRCs of members already talking.
        """
        await self._control.on_protocol_selected(session)

    async def on_resumed(self, session: VoiceSession) -> None:
        """:class:`.gateway.GatewayHandler`: the session continues on a new websocket."""
        await self._control.on_resumed(session)

    async def on_client_speaking(self, session: VoiceSession, data: dict[str, Any]) -> None:
        """:class:`.gateway.GatewayHandler`: keep what the bot says about its speaking state."""
        self.bot_speaking.append(dict(data))
        self._hooks.notify()

    async def on_dave_message(self, session: VoiceSession, op: int, data: Any) -> None:
        """:class:`.gateway.GatewayHandler`: a DAVE message from the bot."""
        await self._control.on_dave_message(session, op, data)

    async def on_connection_closed(self, session: VoiceSession | None, connection: VoiceGatewayConnection) -> None:
        """:class:`.gateway.GatewayHandler`: a websocket ended; the session stays resumable."""
        await self._control.on_connection_closed(session, connection)
