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
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import discord

from ..dave import is_dave_frame, is_silence
from ..opus import SILENCE_FRAME
from ..rtp import MalformedPacket, build_goodbye, build_receiver_report, is_rtcp
from ..transport import SUPPORTED_MODES, DecryptionFailed
from . import dave_server
from .dave_server import DaveGroupServer, LocalDaveMember
from .gateway import GatewayClose, GatewayEvent, Op, VoiceGatewayConnection, VoiceGatewayServer, VoiceSession
from .harness import ClientHarness
from .impairment import (
    Impairment,
    ImpairmentChain,
    PacketImpairment,
    garbage_datagram,
    unknown_ssrc_packet,
    video_packet,
    with_wrong_tag,
)
from .media import BotPacket, MediaServer, TransportLink
from .probing import DEFAULT_BURST_SIZE, ProbeSchedule, check_burst_size
from .sfu import SERVER_SSRC, FeedbackKind, ReceptionStats, feedback
from .speech import OutgoingFrame, PaddingBurst, RTPSender, SenderClock, SentRecord, SpurtRecord

if TYPE_CHECKING:
    from .audio import AudioInput

__all__ = ("EmulatorError", "FaultKind", "SimulatedMember", "VoiceServerEmulator")

_log = logging.getLogger(__name__)

FaultKind = Literal["garbage", "wrong_tag", "unknown_ssrc", "video", "raw"]
SpeakingEvent = Literal["before", "after", "none"]

#: Close codes after which the session cannot be resumed (the emulator forgets it).
_TERMINAL_CLOSE_CODES = frozenset({4004, 4006, 4009, 4011, 4012, 4014, 4016, 4017, 4020, 4021, 4022})
_DEFAULT_GUILD_ID = 900000000000000001
_DEFAULT_CHANNEL_ID = 900000000000000010
_DEFAULT_OTHER_CHANNEL_ID = 900000000000000011
_DEFAULT_BOT_ID = 900000000000000100
#: Size of the UDP keepalive a receiver sends (discord.js: a counter, every 5 s).
KEEPALIVE_LENGTH = 8


class EmulatorError(RuntimeError):
    """The emulator was used in a way that cannot work (the message says what to do instead)."""


def _check_snowflake(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 64:
        raise ValueError(f"{name} must be a positive 64-bit integer id, got {value!r}")
    return value


@dataclass
class _Call:
    """One voice channel's call: who is in it and its DAVE group."""

    channel_id: int
    dave: DaveGroupServer | None = None  # created when the first DAVE participant arrives
    session: VoiceSession | None = None  # the bot's session in this call
    armed_transitions: set[int] = field(default_factory=set)  # transition ids with a timeout task


class SimulatedMember:
    """A member of the call, simulated in-process: real DAVE session, real Opus, real RTP.

    Create with :meth:`VoiceServerEmulator.add_member`.

    Attributes
    ----------
    user_id: :class:`int`
        The member's user id.
    name: :class:`str`
        The member's user name.
    ssrc: :class:`int`
        Audio SSRC (announced in op 5 SPEAKING; in op 12 too for a member with video).
    video_ssrc: :class:`int`
        Video SSRC announced in op 12 when :attr:`video` (nothing is sent on it unless injected).
    video: :class:`bool`
        Whether the member has video state: only then does the bot get op 12 for it.
    speaking: :class:`bool`
        Whether the member has a speaking state in its call (it sent op 5 ``speaking: 1``
        since it joined): the bot gets op 5 for it when its connection starts.
    sender: :class:`.speech.RTPSender`
        Produces the member's packets and records them.
    impairment: Optional[:class:`.impairment.Impairment`]
        This member's own network path (applied before the emulator's global one).
    """

    def __init__(
        self,
        emulator: VoiceServerEmulator,
        user_id: int,
        name: str,
        *,
        ssrc: int,
        video_ssrc: int,
        sender: RTPSender,
        impairment: PacketImpairment | None,
        channel_id: int,
        video: bool = False,
    ) -> None:
        self._emulator = emulator
        self.user_id = user_id
        self.name = name
        self.ssrc = ssrc
        self.video_ssrc = video_ssrc
        self.video = video
        self.speaking = False
        self.sender = sender
        self.impairment = impairment
        self.home_channel_id = channel_id
        self.channel_id: int | None = None
        #: The member's DAVE state (a real ``davey.DaveSession`` inside) while in a DAVE call.
        self.dave: LocalDaveMember | None = None
        self.session_id = secrets.token_hex(16)
        self._speak_lock = asyncio.Lock()
        #: Packets handed to the network (before impairment), and those dropped because no
        #: bot session could receive them.
        self.packets_sent = 0
        self.packets_unroutable = 0
        #: Audio frames still to be sealed under a dead DAVE epoch (:meth:`seal_with_dead_epoch`).
        self.dead_epoch_frames = 0
        self._dead_epoch: LocalDaveMember | None = None

    def __repr__(self) -> str:
        return f"<SimulatedMember {self.name} id={self.user_id} ssrc={self.ssrc} channel={self.channel_id}>"

    @property
    def in_call(self) -> bool:
        """Whether the member is in a voice channel."""
        return self.channel_id is not None

    @property
    def sent(self) -> SentRecord:
        """Everything this member sent, spurt by spurt (:class:`.speech.SentRecord`)."""
        return self.sender.record

    @property
    def member(self) -> discord.Member:
        """The :class:`discord.Member` the bot's client sees for this member."""
        member = self._emulator.guild.get_member(self.user_id)
        if member is None:  # pragma: no cover - added on creation
            raise EmulatorError(f"member {self.user_id} is not in the guild cache")
        return member

    async def join(self, channel: discord.abc.Snowflake | None = None) -> None:
        """Join ``channel`` (default: the channel it was created for).

        Raises
        ------
        EmulatorError
            Already in a call.
        """
        await self._emulator._member_join(self, self.home_channel_id if channel is None else channel.id)

    async def leave(self) -> None:
        """Leave the call: CLIENT_DISCONNECT to the bot, DAVE removal, VOICE_STATE_UPDATE.

        Raises
        ------
        EmulatorError
            Not in a call.
        """
        await self._emulator._member_leave(self)

    async def speak(
        self,
        audio: AudioInput,
        *,
        realtime: bool = True,
        speaking_event: SpeakingEvent | None = None,
        padding: int = 0,
        padding_burst_at: int | None = None,
        padding_burst_size: int | None = None,
    ) -> SpurtRecord:
        """Send one talk spurt to the bot and return what was sent.

        Parameters
        ----------
        audio:
            A WAV path, 48 kHz stereo s16le PCM bytes or a numpy array (see
            :func:`.audio.load_pcm`).
        realtime: :class:`bool`
            Pace packets 20 ms apart on the wall clock (``True``), or send them as fast as
            possible (``False``: RTP numbers are the same, the impairment keeps its order of
            arrival, see ``_speak_fast``). Either way the spurt occupies its nominal length
            on the member's clock: the next spurt starts after it.
        speaking_event: Optional[:class:`str`]
            ``"before"``: SPEAKING (op 5, ``speaking: 1``) before the first packet;
            ``"after"``: right after the first packet (the receiver meets an SSRC before it
            is mapped); ``"none"``: no op 5. Default: the emulator's ``speaking_before``.
        padding: :class:`int`
            RTP padding bytes (0..255) on every packet, which the receiver must strip.
        padding_burst_at: Optional[:class:`int`]
            Send a burst of padding-only packets (bandwidth probing) right before the frame
            with this index (1 .. frames - 1), on top of the bursts the emulator's
            ``padding_bursts`` rate plans. Its packets use up sequence numbers: find them in
            the returned record's ``padding_bursts`` (``first_sequence``, ``count``,
            ``sequences``) or ``padding_sequences``.
        padding_burst_size: Optional[:class:`int`]
            Packets in that burst (default: the emulator's ``padding_burst_size``).

        Returns
        -------
        :class:`.speech.SpurtRecord`
            The frames of the spurt (5 silence frames at the end), also in :attr:`sent`.
            It returns once every packet was handed to the network; the impaired path may
            still hold some (``await server.drain()`` waits until they are on the wire).

        Raises
        ------
        EmulatorError
            The member is not in a call, or the bot is not connected to that call.
        """
        bursts: dict[int, int] = {}
        if padding_burst_at is not None:
            size = self._emulator.padding_burst_size if padding_burst_size is None else padding_burst_size
            bursts[padding_burst_at] = check_burst_size(size)
        elif padding_burst_size is not None:
            raise ValueError("padding_burst_size needs padding_burst_at")
        return await self._emulator._speak(
            self, audio, realtime=realtime, speaking_event=speaking_event, padding=padding, padding_bursts=bursts
        )

    def seal_with_dead_epoch(self, frames: int) -> None:
        """Fault: seal the next ``frames`` audio frames under a DAVE epoch the bot does not hold.

        What a member's client sends when it missed a transition, or what reaches a bot
        after it dropped an epoch's keys: DAVE frames of a known sender that no key of the
        bot opens (davey: ``NoValidCryptorFound``), now and forever.

        Raises
        ------
        ValueError
            ``frames`` is not 0..100000.
        """
        if isinstance(frames, bool) or not isinstance(frames, int) or not 0 <= frames <= 100000:
            raise ValueError(f"frames must be 0..100000, got {frames!r}")
        if frames and self._dead_epoch is None:
            self._dead_epoch = dave_server.stale_epoch_member(self.user_id, self.home_channel_id)
        self.dead_epoch_frames = frames

    def _dave_sealer(self) -> LocalDaveMember | None:
        """Whose keys seal this member's next frame (the dead epoch's while the fault lasts)."""
        if self.dead_epoch_frames and self._dead_epoch is not None:
            self.dead_epoch_frames -= 1
            return self._dead_epoch
        return self.dave

    async def send_sender_report(self) -> bytes:
        """Send an RTCP sender report for this member now; returns the clear report."""
        return await self._emulator._send_sender_report(self)


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
        modes = tuple(modes)
        if not modes:
            raise ValueError("modes must offer at least one encryption mode")
        for mode in modes:
            if mode not in SUPPORTED_MODES:
                raise ValueError(f"unsupported mode {mode!r}; choose from {', '.join(SUPPORTED_MODES)}")
        if len(set(modes)) != len(modes):
            raise ValueError(f"modes lists a mode twice: {modes!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.guild_id = _check_snowflake("guild_id", guild_id)
        self.channel_id = _check_snowflake("channel_id", channel_id)
        self.other_channel_id = _check_snowflake("other_channel_id", other_channel_id)
        self.bot_user_id = _check_snowflake("bot_user_id", bot_user_id)
        if len({self.guild_id, self.channel_id, self.other_channel_id}) != 3:
            raise ValueError("guild_id, channel_id and other_channel_id must be distinct")
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive seconds, got {heartbeat_interval!r}")
        if not 0 <= answer_delay <= 5:
            raise ValueError(f"answer_delay must be 0..5 seconds, got {answer_delay!r}")
        if rtcp_interval is not None and rtcp_interval <= 0:
            raise ValueError(f"rtcp_interval must be positive seconds or None, got {rtcp_interval!r}")
        if sfu_report_interval is not None and sfu_report_interval <= 0:
            raise ValueError(f"sfu_report_interval must be positive seconds or None, got {sfu_report_interval!r}")
        self.sfu_report_interval = sfu_report_interval
        self.dave_enabled = bool(dave)
        self.require_dave = self.dave_enabled if require_dave is None else bool(require_dave)
        self.modes: tuple[str, ...] = modes
        self.seed = seed
        self._rng = random.Random(seed)
        #: The global impairment (the bot's uplink): every member's packets go through it.
        self.impairment = Impairment(
            loss, burst_loss, reorder, duplicate, jitter, delay, seed=self._rng.getrandbits(63)
        )
        self.bot_name = bot_name
        self.speaking_before = speaking_before
        self.answer_delay = answer_delay
        self.rtcp_interval = rtcp_interval
        self.resume_session_description = resume_session_description
        self.goodbye_on_close = goodbye_on_close
        self.echo_keepalive = bool(echo_keepalive)
        self.ssrc_in_client_connect = bool(ssrc_in_client_connect)
        if padding_bursts is not None:
            ProbeSchedule(padding_bursts, padding_burst_size)  # validates both now, not at add_member
        self.padding_bursts = padding_bursts
        self.padding_burst_size = check_burst_size(padding_burst_size)

        self.gateway = VoiceGatewayServer(self, heartbeat_interval_ms=heartbeat_interval * 1000.0)
        self.media = MediaServer(self, media_timeout=media_timeout)  # validates media_timeout
        self._harness: ClientHarness | None = None
        self._calls: dict[int, _Call] = {
            self.channel_id: _Call(self.channel_id),
            self.other_channel_id: _Call(self.other_channel_id),
        }
        self.members: dict[int, SimulatedMember] = {}
        self._used_ssrcs: set[int] = {SERVER_SSRC}
        self._main_session_id = secrets.token_hex(16)  # the bot's main gateway session
        self._bot_session: VoiceSession | None = None
        self._bot_channel_id: int | None = None
        self._sessions: list[VoiceSession] = []  # every session ever created (tests inspect)
        self._links: dict[VoiceSession, TransportLink] = {}
        self._udp_addresses: dict[VoiceSession, tuple[str, int]] = {}
        self._reception: dict[VoiceSession, ReceptionStats] = {}  # of the bot's own audio
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_changed = asyncio.Event()
        self._running = False
        self._closed = False
        self._wall0 = 0.0
        self._mono0 = 0.0
        #: Every packet the bot sent, decrypted (transport and DAVE) back to Opus.
        self.received_from_bot: list[BotPacket] = []
        #: Datagrams from the bot that did not parse or authenticate.
        self.bot_packet_errors: list[tuple[bytes, str]] = []
        #: RTCP the server itself sent the bot (receiver reports, feedback), ``(time.monotonic(),
        #: clear packet)``, whether or not the media timeout withheld it (bounded).
        self.sfu_rtcp_sent: list[tuple[float, bytes]] = []
        #: The bot's 8-byte UDP keepalives, ``(time.monotonic(), datagram)``, oldest first (bounded).
        self.keepalives_received: list[tuple[float, bytes]] = []
        #: SPEAKING (op 5) payloads the bot sent.
        self.bot_speaking: list[dict[str, Any]] = []
        #: The DAVE messages routed, ``(direction, user_id, op)``; for tests and logs.
        self.dave_log: list[tuple[str, int, int]] = []
        #: DAVE messages the group server or a simulated member rejected, with the error.
        self.dave_errors: list[tuple[dave_server.DaveMessage, Exception]] = []
        self.max_received = 100000

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
        if self._running or self._closed:
            raise EmulatorError("an emulator starts once; create a new one")
        loop = asyncio.get_running_loop()
        self._wall0, self._mono0 = time.time(), loop.time()
        await self.gateway.start()
        await self.media.start()
        self._harness = ClientHarness(
            guild_id=self.guild_id,
            channel_ids=(self.channel_id, self.other_channel_id),
            bot_user_id=self.bot_user_id,
            bot_name=self.bot_name,
            ws_host=self.gateway.host,
            on_voice_state=self._on_voice_state_request,
        )
        await self._harness.start()
        self._running = True
        if self.rtcp_interval is not None:
            self._spawn(self._rtcp_loop(self.rtcp_interval), "rtcp")
        if self.sfu_report_interval is not None:
            self._spawn(self._sfu_report_loop(self.sfu_report_interval), "sfu-rtcp")
        _log.info(
            "voice emulator up: ws://%s udp %s dave=%s", self.gateway.endpoint, self.media.port, self.dave_enabled
        )

    async def close(self) -> None:
        """Tear everything down: the client (and its voice client), tasks, sockets."""
        if self._closed:
            return
        self._closed = True
        if self._harness is not None:
            await self._harness.close()
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.gateway.stop()
        await self.media.stop()
        _log.info("voice emulator closed")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"voice-emulator-{name}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                _log.error("emulator task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def _check_running(self) -> None:
        if not self._running:
            raise EmulatorError("the emulator is not running: use `async with VoiceServerEmulator() as server:`")

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def wait_until(self, predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` is true, re-checking on every state change and every 20 ms.

        Raises
        ------
        asyncio.TimeoutError
            With ``what`` in the message, when it stays false for ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            event = self._state_changed
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.02))
            except TimeoutError:
                pass

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
        return self._bot_session

    @property
    def sessions(self) -> list[VoiceSession]:
        """Every voice session the bot ever had, oldest first."""
        return list(self._sessions)

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
        session = self._bot_session
        address = self._udp_addresses.get(session) if session is not None else None
        return self.media.last_heard.get(address) if address is not None else None

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
        return sender_time - self._wall0 + self._mono0

    # -- members -------------------------------------------------------------------------------

    def _new_ssrc(self) -> int:
        while True:
            ssrc = self._rng.randrange(1, 1 << 32)
            if ssrc not in self._used_ssrcs:
                self._used_ssrcs.add(ssrc)
                return ssrc

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
        self._check_running()
        _check_snowflake("user_id", user_id)
        if user_id == self.bot_user_id:
            raise EmulatorError("user_id is the bot's own id; members are other users")
        if user_id in self.members:
            raise EmulatorError(f"a member with user id {user_id} already exists")
        try:
            sender_clock = clock if isinstance(clock, SenderClock) else SenderClock(clock)
        except ValueError:
            raise ValueError(f"clock must be 'webrtc' or 'discordpy', got {clock!r}") from None
        if impairment is not None and not callable(getattr(impairment, "apply", None)):
            raise ValueError(f"impairment must be an Impairment (with .apply), got {impairment!r}")
        channel_id = self.channel_id if channel is None else channel.id
        if channel_id not in self._calls:
            raise ValueError(f"channel {channel_id} is not a voice channel of the emulated guild")
        if ssrc is None:
            ssrc = self._new_ssrc()
        else:
            if not 0 < ssrc < 1 << 32:
                raise ValueError(f"ssrc must be 1..2**32-1, got {ssrc!r}")
            if ssrc in self._used_ssrcs:
                raise EmulatorError(f"ssrc {ssrc} is already in use")
            self._used_ssrcs.add(ssrc)
        sender_seed = self._rng.getrandbits(63)
        probing = None
        if self.padding_bursts is not None and sender_clock is SenderClock.webrtc:
            # Seeded from the sender's seed, not drawn from self._rng: turning probing on or
            # off leaves every other random choice of a seeded emulator as it was.
            probing = ProbeSchedule(
                self.padding_bursts, self.padding_burst_size, random.Random(f"probing:{sender_seed}")
            )
        sender = RTPSender(
            ssrc, sequence=sequence, timestamp=timestamp, clock=sender_clock, rng=sender_seed, probing=probing
        )
        member = SimulatedMember(
            self,
            user_id,
            name or f"member-{user_id}",
            ssrc=ssrc,
            video_ssrc=self._new_ssrc(),
            sender=sender,
            impairment=impairment,
            channel_id=channel_id,
            video=bool(video),
        )
        self.members[user_id] = member
        self.harness.add_member(user_id, member.name)
        if join:
            await self._member_join(member, channel_id)
        return member

    async def _member_join(self, member: SimulatedMember, channel_id: int) -> None:
        self._check_running()
        if member.in_call:
            raise EmulatorError(f"{member.name} is already in channel {member.channel_id}; leave() first")
        call = self._calls.get(channel_id)
        if call is None:
            raise ValueError(f"channel {channel_id} is not a voice channel of the emulated guild")
        member.channel_id = channel_id
        member.speaking = False
        self.harness.dispatch_voice_state(member.user_id, channel_id, member.session_id)
        session = call.session
        if session is not None and session.established and session.connection is not None:
            await session.connection.send_json(Op.CLIENTS_CONNECT, {"user_ids": [str(member.user_id)]})
            if self._announces_ssrcs(member):
                await session.connection.send_json(Op.CLIENT_CONNECT, self._client_connect_payload(member))
        if self.dave_enabled:
            await self._dave_member_join(call, member)
        self._notify()

    async def _member_leave(self, member: SimulatedMember) -> None:
        self._check_running()
        if not member.in_call:
            raise EmulatorError(f"{member.name} is not in a call")
        assert member.channel_id is not None
        call = self._calls[member.channel_id]
        # A spurt in progress stops at its next frame (people do leave mid-sentence).
        member.channel_id = None
        member.speaking = False
        session = call.session
        if session is not None and session.established and session.connection is not None:
            await session.connection.send_json(Op.CLIENT_DISCONNECT, {"user_id": str(member.user_id)})
        if self.dave_enabled:
            await self._dave_member_leave(call, member)
        self.harness.dispatch_voice_state(member.user_id, None, member.session_id)
        self._notify()

    def _announces_ssrcs(self, member: SimulatedMember) -> bool:
        """Whether the bot gets op 12 for ``member``: Discord sends it for members with video only."""
        return member.video or self.ssrc_in_client_connect

    def _client_connect_payload(self, member: SimulatedMember) -> dict[str, Any]:
        return {
            "user_id": str(member.user_id),
            "audio_ssrc": member.ssrc,
            "video_ssrc": member.video_ssrc,
            "streams": [
                {
                    "type": "video",
                    "rid": "100",
                    "ssrc": member.video_ssrc,
                    "rtx_ssrc": member.video_ssrc + 1 if member.video_ssrc < (1 << 32) - 1 else 1,
                    "active": False,
                    "quality": 100,
                    "max_bitrate": 2500000,
                    "max_framerate": 30,
                    "max_resolution": {"type": "fixed", "width": 1280, "height": 720},
                }
            ],
        }

    def _members_in(self, channel_id: int) -> list[SimulatedMember]:
        return [m for m in self.members.values() if m.channel_id == channel_id]

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
        self._check_running()
        if self.guild.voice_client is not None:
            raise EmulatorError("the bot is already connected; disconnect it or use move_bot()")
        target = channel or self.channel
        if target.guild.id != self.guild_id or target.id not in self._calls:
            raise ValueError(f"{target!r} is not a voice channel of the emulated guild")
        vc = await target.connect(cls=cls, timeout=timeout, **kwargs)
        if wait_dave and self.dave_enabled:
            await self.wait_dave_ready(timeout=timeout)
        return vc

    def _bot_dave_ready(self) -> bool:
        vc = self.guild.voice_client
        state = getattr(vc, "_connection", None)
        session = getattr(state, "dave_session", None)
        return bool(session is not None and session.ready)

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
        channel_id = self._bot_channel_id
        if channel_id is None:
            return False
        call = self._calls[channel_id]
        group = call.dave
        if group is not None and set(group.participants) == {self.bot_user_id} and not group.pending_transitions:
            # Alone in the call there is no group to join (DAVE's sole-member state): the bot
            # holds a key package and sends unencrypted until somebody joins.
            participant = group._participants.get(self.bot_user_id)
            return participant is not None and participant.key_package is not None
        if not self._bot_dave_ready():
            return False
        if group is None or not group.established or group.pending_transitions or group.pending_members:
            return False
        bot_session = self.guild.voice_client._connection.dave_session  # type: ignore[union-attr]
        if self.bot_user_id not in group.members or bot_session.epoch != group.epoch:
            return False
        for member in self._members_in(channel_id):
            if member.dave is None or not member.dave.ready or member.dave.epoch != group.epoch:
                return False
        return True

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
        if not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError(f"close code must be 1000 or 3000..4999, got {code!r}")
        session = self._bot_session
        if session is None or session.connection is None or session.connection.closed:
            raise EmulatorError("the bot has no open voice websocket to close")
        if code in _TERMINAL_CLOSE_CODES:
            await self._end_session(session, why=f"closed with {code}")
        await session.connection.close(code, reason)

    async def kick_bot(self) -> None:
        """Disconnect the bot as a moderator would: VOICE_STATE_UPDATE with no channel, close 4014.

        Raises
        ------
        EmulatorError
            The bot is not in voice.
        """
        session = self._bot_session
        if session is None:
            raise EmulatorError("the bot is not in voice")
        connection = session.connection
        await self._end_session(session, why="kicked")
        self._bot_channel_id = None
        self.harness.dispatch_voice_state(self.bot_user_id, None, self._main_session_id)
        await asyncio.sleep(self.answer_delay)
        if connection is not None:
            await connection.close(4014, "Disconnected")

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
        self._check_running()
        if channel.id not in self._calls:
            raise ValueError(f"{channel!r} is not a voice channel of the emulated guild")
        if self._bot_session is None:
            raise EmulatorError("the bot is not in voice; connect() it first")
        if self._bot_channel_id == channel.id:
            raise EmulatorError(f"the bot is already in channel {channel.id}")
        await self._join_bot(channel.id)

    async def new_session_key(self) -> bytes:
        """Rotate the transport key: SESSION_DESCRIPTION with a new secret key (same mode).

        Returns the new key. Packets already in flight were sealed with the old key.

        Raises
        ------
        EmulatorError
            The bot's session is not established.
        """
        session = self._bot_session
        if session is None or not session.established or session.connection is None:
            raise EmulatorError("the bot has no established voice session")
        session.secret_key = self._rng.randbytes(32)
        assert session.mode is not None
        self._links[session] = TransportLink(session.mode, session.secret_key)
        await session.connection.send_session_description()
        if self.dave_enabled and session.dave_version:
            # discord.py re-creates its DAVE session on every SESSION_DESCRIPTION.
            await self._dave_bot_reinit(session)
        return session.secret_key

    # -- fault injection -----------------------------------------------------------------------

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
        if kind not in ("garbage", "wrong_tag", "unknown_ssrc", "video", "raw"):
            raise ValueError(f"unknown fault kind {kind!r}; use garbage, wrong_tag, unknown_ssrc, video or raw")
        if not 1 <= count <= 10000:
            raise ValueError(f"count must be 1..10000, got {count!r}")
        _session, link, address = self._bot_route()
        out: list[bytes] = []
        for i in range(count):
            if kind == "garbage":
                data = garbage_datagram(self._rng, size)
            elif kind == "raw":
                if payload is None:
                    raise ValueError("inject('raw') needs payload=bytes")
                data = bytes(payload)
            elif kind == "unknown_ssrc":
                target = ssrc if ssrc is not None else self._new_ssrc()
                data = unknown_ssrc_packet(
                    link.cipher, link.next_counter(), ssrc=target, sequence=i & 0xFFFF, timestamp=(i * 960) & 0xFFFFFFFF
                )
            elif kind == "video":
                target = ssrc if ssrc is not None else (member.video_ssrc if member is not None else None)
                if target is None:
                    raise ValueError("inject('video') needs member= or ssrc=")
                data = video_packet(
                    link.cipher,
                    link.next_counter(),
                    ssrc=target,
                    sequence=i & 0xFFFF,
                    payload_type=payload_type,
                    rng=self._rng,
                )
            else:  # wrong_tag
                if member is None:
                    raise ValueError("inject('wrong_tag') needs member=")
                frame_payload = payload if payload is not None else SILENCE_FRAME
                data = with_wrong_tag(
                    unknown_ssrc_packet(
                        link.cipher, link.next_counter(), ssrc=member.ssrc, sequence=i & 0xFFFF, payload=frame_payload
                    )
                )
            self.media.send_now(data, address)
            out.append(data)
        await asyncio.sleep(0)
        return out

    # -- media to the bot -------------------------------------------------------------------------

    def _bot_route(self, channel_id: int | None = None) -> tuple[VoiceSession, TransportLink, tuple[str, int]]:
        """The bot session (in ``channel_id`` if given) that can receive media now."""
        self._check_running()
        session = self._bot_session
        if session is None or (channel_id is not None and session.channel_id != channel_id):
            raise EmulatorError("the bot is not connected to this call: await server.connect() first")
        link = self._links.get(session)
        address = self._udp_addresses.get(session)
        if link is None or address is None:
            raise EmulatorError("the bot's voice session is not established yet (no key or no UDP address)")
        return session, link, address

    def _member_path(self, member: SimulatedMember) -> PacketImpairment:
        if member.impairment is None:
            return self.impairment
        return ImpairmentChain(member.impairment, self.impairment)

    def _send_to_bot(
        self, member: SimulatedMember, packet: bytes, send_loop_time: float
    ) -> asyncio.Future[None] | None:
        """Put one of ``member``'s packets on the (impaired) path to the bot.

        Returns a future that completes when its first copy is on the wire, or ``None`` when
        the packet was lost or cannot be routed.
        """
        if not member.in_call:
            member.packets_unroutable += 1
            return None
        try:
            _, _, address = self._bot_route(member.channel_id)
        except EmulatorError:
            member.packets_unroutable += 1
            return None
        member.packets_sent += 1
        deliveries = self._member_path(member).apply(packet, send_loop_time)
        if not deliveries:
            return None
        on_wire: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def sent() -> None:
            if not on_wire.done():
                on_wire.set_result(None)

        for deliver_at, data in deliveries:
            self.media.schedule(data, address, deliver_at, sent)
        return on_wire

    @staticmethod
    def _speaking_payload(member: SimulatedMember) -> dict[str, Any]:
        return {"user_id": str(member.user_id), "ssrc": member.ssrc, "speaking": 1}

    async def _send_speaking(self, member: SimulatedMember) -> None:
        # The member told Discord, whether or not the bot is there to hear it now.
        member.speaking = True
        session = self._bot_session
        if session is None or session.connection is None or session.channel_id != member.channel_id:
            return
        await session.connection.send_json(Op.SPEAKING, self._speaking_payload(member))

    async def _speak(
        self,
        member: SimulatedMember,
        audio: AudioInput,
        *,
        realtime: bool,
        speaking_event: SpeakingEvent | None,
        padding: int,
        padding_bursts: dict[int, int],
    ) -> SpurtRecord:
        self._check_running()
        if speaking_event is None:
            speaking_event = "before" if self.speaking_before else "after"
        if speaking_event not in ("before", "after", "none"):
            raise ValueError(f"speaking_event must be 'before', 'after' or 'none', got {speaking_event!r}")
        if not 0 <= padding <= 255:
            raise ValueError(f"padding must be 0..255 bytes, got {padding!r}")
        if self.members.get(member.user_id) is not member:
            raise EmulatorError(f"{member!r} does not belong to this emulator")
        if not member.in_call:
            raise EmulatorError(f"{member.name} is not in a call; join() first")
        self._bot_route(member.channel_id)  # fail early and clearly: nobody to speak to
        if self.dave_enabled:
            try:
                await self.wait_until(
                    lambda: member.dave is not None and member.dave.ready,
                    timeout=10.0,
                    what=f"{member.name}'s DAVE session",
                )
            except TimeoutError:
                raise EmulatorError(f"{member.name} has no ready DAVE session: is the bot in the call?") from None
        async with member._speak_lock:
            record = member.sender.record
            start = self.sender_now()
            if record.spurts:
                start = max(start, record.spurts[-1].end)
            frames = member.sender.talk(audio, start, padding_bursts=padding_bursts)
            spurt = record.spurts[-1]
            bursts = {burst.before_frame: burst for burst in spurt.padding_bursts}
            if speaking_event == "before":
                await self._send_speaking(member)
            if realtime:
                await self._speak_realtime(member, frames, bursts, speaking_event == "after", padding)
            else:
                await self._speak_fast(member, frames, bursts, speaking_event == "after", padding)
            return spurt

    def _member_link(self, member: SimulatedMember) -> TransportLink | None:
        """The transport link ``member``'s packets are sealed with now (``None``: nobody to send to)."""
        try:
            _, link, _ = self._bot_route(member.channel_id)
        except EmulatorError:
            member.packets_unroutable += 1
            return None
        return link

    def _seal_burst(self, member: SimulatedMember, burst: PaddingBurst) -> list[tuple[float, bytes]]:
        """Transport-encrypt a padding burst (never DAVE); ``(sender send time, packet)`` each."""
        link = self._member_link(member)
        if link is None:
            return []
        return [(t, burst.to_packet(i, link.cipher, link.next_counter())) for i, t in enumerate(burst.send_times)]

    def _seal_frame(self, member: SimulatedMember, frame: OutgoingFrame, padding: int) -> bytes | None:
        """DAVE- and transport-encrypt one frame as ``member``'s client would; ``None`` if it cannot."""
        link = self._member_link(member)
        if link is None:
            return None
        payload = frame.opus
        if self.dave_enabled and not frame.silence and not is_silence(payload):
            sealer = member._dave_sealer()
            if sealer is None:  # left the call meanwhile
                member.packets_unroutable += 1
                return None
            payload = sealer.encrypt_opus(payload)
        return frame.to_packet(link.cipher, link.next_counter(), payload=payload, padding=padding)

    async def _speak_realtime(
        self,
        member: SimulatedMember,
        frames: list[OutgoingFrame],
        bursts: dict[int, PaddingBurst],
        speaking_after: bool,
        padding: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        for i, frame in enumerate(frames):
            burst = bursts.get(i)
            if burst is not None:
                # The whole burst at once: its packets are less than a millisecond apart, finer
                # than the loop's sleeps.
                await self._sleep_until(burst.send_time)
                for _, packet in self._seal_burst(member, burst) if member.in_call else ():
                    self._send_to_bot(member, packet, loop.time())
            await self._sleep_until(frame.send_time)
            if not member.in_call:
                return
            packet = self._seal_frame(member, frame, padding)
            if packet is None:
                continue
            on_wire = self._send_to_bot(member, packet, loop.time())
            if i == 0 and speaking_after:
                await self._speaking_after(member, on_wire)

    async def _sleep_until(self, sender_time: float) -> None:
        delay = self._to_loop_time(sender_time) - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _speak_fast(
        self,
        member: SimulatedMember,
        frames: list[OutgoingFrame],
        bursts: dict[int, PaddingBurst],
        speaking_after: bool,
        padding: int,
    ) -> None:
        """Send a spurt as fast as possible, keeping the impairment's *order* of arrival.

        The impairment runs on the frames' nominal send times (20 ms apart), and the
        deliveries go on the wire back to back in the order of their nominal arrival times,
        after the shortest latency of the batch (the constant ``delay``): reordering,
        duplicates and jitter-induced swaps look as they would in real time, only faster.
        """
        loop = asyncio.get_running_loop()
        try:
            _, _, address = self._bot_route(member.channel_id)
        except EmulatorError:
            member.packets_unroutable += len(frames)
            return
        path = self._member_path(member)
        deliveries: list[tuple[float, int, bytes]] = []
        latency = float("inf")
        for i, frame in enumerate(frames):
            if i and i % 50 == 0:
                await asyncio.sleep(0)  # keep the loop (and the bot) responsive while we build
            burst = bursts.get(i)
            for send_time, packet in self._seal_burst(member, burst) if burst is not None else ():
                member.packets_sent += 1
                for arrival, data in path.apply(packet, send_time):
                    deliveries.append((arrival, i, data))
                    latency = min(latency, arrival - send_time)
            packet = self._seal_frame(member, frame, padding)
            if packet is None:
                continue
            member.packets_sent += 1
            for arrival, data in path.apply(packet, frame.send_time):
                deliveries.append((arrival, i, data))
                latency = min(latency, arrival - frame.send_time)
        if not deliveries:
            return
        deliveries.sort(key=lambda d: d[0])
        # Same delivery time for all: the queue then keeps insertion order, the sorted one.
        deliver_at = loop.time() + max(latency, 0.0)
        first: asyncio.Future[None] = loop.create_future()

        def first_sent() -> None:
            if not first.done():
                first.set_result(None)

        for _, index, data in deliveries:
            self.media.schedule(data, address, deliver_at, first_sent if index == 0 else None)
        if speaking_after:
            await self._speaking_after(member, first if any(d[1] == 0 for d in deliveries) else None)

    async def _speaking_after(self, member: SimulatedMember, on_wire: asyncio.Future[None] | None) -> None:
        if on_wire is not None:
            # The first packet is on the wire before op 5 (bounded: impairment may delay it).
            await asyncio.wait([on_wire], timeout=2.0)
        await self._send_speaking(member)

    async def _send_sender_report(self, member: SimulatedMember) -> bytes:
        _, link, _ = self._bot_route(member.channel_id)
        clear = member.sender.sender_report(self.sender_now())
        self._send_to_bot(member, link.seal_rtcp(clear), asyncio.get_running_loop().time())
        return clear

    async def _rtcp_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for member in list(self.members.values()):
                if not member.in_call or member.sender.clock is not SenderClock.webrtc or not member.sent.spurts:
                    continue
                try:
                    await self._send_sender_report(member)
                except EmulatorError:
                    continue

    # -- RTCP from the SFU ---------------------------------------------------------------------

    def _send_sfu_rtcp(self, clear: bytes) -> None:
        """Seal and queue one RTCP packet of the server's own (subject to the media timeout)."""
        _, link, address = self._bot_route()
        if len(self.sfu_rtcp_sent) < self.max_received:
            self.sfu_rtcp_sent.append((time.monotonic(), clear))
        self.media.schedule(link.seal_rtcp(clear), address, asyncio.get_running_loop().time())

    def _sfu_receiver_report(self) -> bytes:
        session = self._bot_session
        stats = self._reception.get(session) if session is not None else None
        blocks = [stats.report_block(session.ssrc)] if session is not None and stats is not None else []
        return build_receiver_report(SERVER_SSRC, blocks)

    async def _sfu_report_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self._send_sfu_rtcp(self._sfu_receiver_report())
            except EmulatorError:
                continue  # no established session to report to

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
        session, _, _ = self._bot_route()
        target = session.ssrc if media_ssrc is None else media_ssrc
        clear = feedback(kind, SERVER_SSRC, target, sequences=sequences, fmt=fmt, fci=fci)
        self._send_sfu_rtcp(clear)
        await asyncio.sleep(0)
        return clear

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every packet scheduled for the bot has been put on the wire."""
        await self.media.drain(timeout)

    # -- media from the bot ---------------------------------------------------------------------

    def on_ip_discovery(self, ssrc: int, address: tuple[str, int]) -> None:
        """:class:`.media.MediaHandler`: remember where the bot's session receives."""
        for session in reversed(self._sessions):
            if session.ssrc == ssrc and not session.closed:
                self._udp_addresses[session] = address
                _log.debug("session %s ssrc %s discovered at %s", session.token, ssrc, address)
                self._notify()
                return
        _log.debug("IP discovery for unknown ssrc %s from %s", ssrc, address)

    def on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """:class:`.media.MediaHandler`: a packet from the bot."""
        if len(data) == KEEPALIVE_LENGTH:
            self._on_keepalive(data, address)
            return
        session = self._bot_session
        link = self._links.get(session) if session is not None else None
        if session is None or link is None or is_rtcp(data):
            self._bot_error(data, "no session" if session is None else ("rtcp" if is_rtcp(data) else "no key"))
            return
        try:
            header, _, payload = link.open_rtp(data)
        except (MalformedPacket, DecryptionFailed) as exc:
            self._bot_error(data, f"{type(exc).__name__}: {exc}")
            return
        if header.ssrc == session.ssrc:
            self._reception.setdefault(session, ReceptionStats()).update(
                header.sequence, header.timestamp, time.monotonic()
            )
        opus, dave, decrypted, error = payload, False, True, None
        if self.dave_enabled and session.dave_version and not is_silence(payload):
            dave = is_dave_frame(payload)
            if dave:
                opus, error = self._dave_decrypt_from_bot(session, payload)
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
        self._notify()

    def _on_keepalive(self, data: bytes, address: tuple[str, int]) -> None:
        # Eight bytes can be neither RTP (12-byte header) nor RTCP (8-byte header plus a
        # 4-byte minimum of body and the rtpsize nonce): a keepalive, never an error.
        if len(self.keepalives_received) < self.max_received:
            self.keepalives_received.append((time.monotonic(), bytes(data)))
        if self.echo_keepalive and self._running:
            try:
                self.media.send_now(data, address)
            except (RuntimeError, OSError) as exc:
                _log.debug("keepalive echo to %s not sent: %s", address, exc)
        self._notify()

    def _bot_error(self, data: bytes, why: str) -> None:
        if len(self.bot_packet_errors) < 1000:
            self.bot_packet_errors.append((bytes(data[:64]), why))
        _log.debug("unusable packet from the bot: %s", why)

    # -- the main gateway (op 4) ----------------------------------------------------------------

    async def _on_voice_state_request(
        self, guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool
    ) -> None:
        if int(guild_id) != self.guild_id:
            _log.warning("op 4 for unknown guild %s ignored", guild_id)
            return
        if self._closed and channel_id is not None:
            return
        # Answer later, from a task: discord.py sends op 4 and only then starts waiting.
        self._spawn(self._answer_voice_state(channel_id, self_mute, self_deaf), "op4")

    async def _answer_voice_state(self, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        await asyncio.sleep(self.answer_delay)
        if channel_id is None:
            session = self._bot_session
            if session is not None:
                await self._end_session(session, why="bot left")
            self._bot_channel_id = None
            self.harness.dispatch_voice_state(
                self.bot_user_id, None, self._main_session_id, self_mute=self_mute, self_deaf=self_deaf
            )
            return
        channel_id = int(channel_id)
        if channel_id not in self._calls:
            _log.warning("op 4 for unknown channel %s: no answer (discord.py will time out)", channel_id)
            return
        session = self._bot_session
        if session is not None and not session.closed and self._bot_channel_id == channel_id:
            # Re-join of the channel it is in (discord.py does this to resume after 4015).
            # VOICE_SERVER_UPDATE first: discord.py, still "connected", then expects the
            # voice state update to complete its handshake; the other order leaves it waiting.
            self.harness.dispatch_voice_server(session.token, self.gateway.endpoint)
            await asyncio.sleep(0)
            self.harness.dispatch_voice_state(
                self.bot_user_id, channel_id, self._main_session_id, self_mute=self_mute, self_deaf=self_deaf
            )
            return
        await self._join_bot(channel_id, self_mute=self_mute, self_deaf=self_deaf)

    async def _join_bot(self, channel_id: int, *, self_mute: bool = False, self_deaf: bool = False) -> None:
        """Put the bot in ``channel_id`` with a fresh voice session (join or move)."""
        old = self._bot_session
        old_connection = old.connection if old is not None else None
        if old is not None:
            await self._end_session(old, why="moved")
        session = VoiceSession(
            guild_id=self.guild_id,
            channel_id=channel_id,
            user_id=self.bot_user_id,
            session_id=self._main_session_id,
            token=secrets.token_hex(8),
            ssrc=self._new_ssrc(),
            secret_key=self._rng.randbytes(32),
            dave_version=0,
        )
        self._sessions.append(session)
        self._bot_session = session
        self._bot_channel_id = channel_id
        self._calls[channel_id].session = session
        self.harness.dispatch_voice_state(
            self.bot_user_id, channel_id, self._main_session_id, self_mute=self_mute, self_deaf=self_deaf
        )
        await asyncio.sleep(0)
        self.harness.dispatch_voice_server(session.token, self.gateway.endpoint)
        if old_connection is not None and not old_connection.closed:
            # The old voice server drops the bot; discord.py reconnects to the new one.
            await asyncio.sleep(max(self.answer_delay, 0.01))
            await old_connection.close(4014, "Moved")
        self._notify()

    async def _end_session(self, session: VoiceSession, *, why: str) -> None:
        if session.closed:
            return
        session.closed = True
        _log.debug("voice session %s ends: %s", session.token, why)
        call = self._calls[session.channel_id]
        if call.session is session:
            call.session = None
        if self._bot_session is session:
            self._bot_session = None
        self._goodbye(session, "session ended")
        self._links.pop(session, None)
        self._udp_addresses.pop(session, None)
        self._reception.pop(session, None)
        if self.dave_enabled and session.dave_version:
            await self._dave_bot_leave(call)
        self._notify()

    # -- the voice gateway (GatewayHandler) -------------------------------------------------------

    @property
    def udp_port(self) -> int:
        """:class:`.gateway.GatewayHandler`: the port READY announces."""
        return self.media.port

    def _find_session(self, server_id: Any, session_id: Any, token: Any) -> VoiceSession:
        if str(server_id) != str(self.guild_id):
            raise GatewayClose(4011, "Server not found")
        for session in reversed(self._sessions):
            if session.token == token:
                if session.closed:
                    raise GatewayClose(4006, "Session is no longer valid")
                if session.session_id != session_id:
                    raise GatewayClose(4004, "Authentication failed")
                return session
        raise GatewayClose(4004, "Authentication failed")

    def authenticate(self, identify: dict[str, Any]) -> VoiceSession:
        """:class:`.gateway.GatewayHandler`: IDENTIFY names one of our sessions."""
        session = self._find_session(identify.get("server_id"), identify.get("session_id"), identify.get("token"))
        if str(identify.get("user_id")) != str(self.bot_user_id):
            raise GatewayClose(4004, "Authentication failed")
        # A session may be identified again on a new websocket; the newer one replaces the
        # older (the gateway closes that one with 4006).
        max_dave = identify.get("max_dave_protocol_version") or 0
        if self.dave_enabled and max_dave >= 1:
            session.dave_version = 1
        elif self.require_dave:
            raise GatewayClose(4017, "E2EE/DAVE protocol required")
        else:
            session.dave_version = 0
        return session

    def authenticate_resume(self, resume: dict[str, Any]) -> VoiceSession:
        """:class:`.gateway.GatewayHandler`: RESUME names a live, identified session."""
        session = self._find_session(resume.get("server_id"), resume.get("session_id"), resume.get("token"))
        if not session.identified:
            raise GatewayClose(4006, "Session is no longer valid")
        return session

    async def on_protocol_selected(self, session: VoiceSession) -> None:
        """:class:`.gateway.GatewayHandler`: announce the call and start DAVE for the bot.

        Op 11 names everyone in the call; op 12 goes only for members with video; op 5
        (``speaking: 1``) for every member with a speaking state: that is how the bot learns
        the audio SSRCs of members already talking.
        """
        assert session.mode is not None and session.connection is not None
        self._links[session] = TransportLink(session.mode, session.secret_key)
        connection = session.connection
        members = self._members_in(session.channel_id)
        if members:
            await connection.send_json(Op.CLIENTS_CONNECT, {"user_ids": [str(m.user_id) for m in members]})
            for member in members:
                if self._announces_ssrcs(member):
                    await connection.send_json(Op.CLIENT_CONNECT, self._client_connect_payload(member))
            for member in members:
                if member.speaking:
                    await connection.send_json(Op.SPEAKING, self._speaking_payload(member))
        if self.dave_enabled and session.dave_version:
            await self._dave_bot_join(session)
        self._notify()

    async def on_resumed(self, session: VoiceSession) -> None:
        """:class:`.gateway.GatewayHandler`: the session continues on a new websocket."""
        if self.resume_session_description and session.established and session.connection is not None:
            await session.connection.send_session_description()
            if self.dave_enabled and session.dave_version:
                await self._dave_bot_reinit(session)
        self._notify()

    async def on_client_speaking(self, session: VoiceSession, data: dict[str, Any]) -> None:
        """:class:`.gateway.GatewayHandler`: keep what the bot says about its speaking state."""
        self.bot_speaking.append(dict(data))
        self._notify()

    async def on_dave_message(self, session: VoiceSession, op: int, data: Any) -> None:
        """:class:`.gateway.GatewayHandler`: a DAVE message from the bot."""
        if not (self.dave_enabled and session.dave_version):
            raise GatewayClose(4020, f"DAVE op {op} on a session without DAVE")
        if session.closed:
            return
        call = self._calls[session.channel_id]
        await self._dave_from_bot(call, op, data)
        self._notify()

    async def on_connection_closed(self, session: VoiceSession | None, connection: VoiceGatewayConnection) -> None:
        """:class:`.gateway.GatewayHandler`: a websocket ended; the session stays resumable."""
        if session is not None and session.connection is connection:
            session.connection = None
            if not connection.closed_by_server:
                # discord.py closes its websocket right before it closes or replaces its
                # UDP socket (disconnect, reconnect): the last moment a BYE can wake it.
                self._goodbye(session, "websocket closed")
        self._notify()

    def _goodbye(self, session: VoiceSession, reason: str) -> None:
        """With ``goodbye_on_close`` only: an RTCP BYE for the bot's own SSRC (Discord sends none)."""
        if not self.goodbye_on_close:
            return
        link = self._links.get(session)
        address = self._udp_addresses.get(session)
        if link is None or address is None or not self._running:
            return
        try:
            self.media.send_now(link.seal_rtcp(build_goodbye([session.ssrc], reason.encode()[:255])), address)
        except (RuntimeError, OSError) as exc:
            _log.debug("BYE to %s not sent: %s", address, exc)

    # -- DAVE ----------------------------------------------------------------------------------
    # The server side is dave_server.DaveGroupServer (one per channel); simulated members are
    # dave_server.LocalDaveMember and are routed in-process; what is addressed to the bot goes
    # out on its websocket.

    def _dave_group(self, call: _Call) -> DaveGroupServer:
        if call.dave is None:
            call.dave = dave_server.DaveGroupServer(call.channel_id, require_e2ee=self.require_dave)
        return call.dave

    def _local_members(self, call: _Call) -> dict[int, LocalDaveMember]:
        return {m.user_id: m.dave for m in self._members_in(call.channel_id) if m.dave is not None}

    async def _dave_route(self, call: _Call, messages: list[dave_server.DaveMessage]) -> None:
        """Run ``messages`` through the in-process members; send the bot its share."""
        group = self._dave_group(call)
        trace: list[dave_server.DaveMessage] = []

        def on_error(message: dave_server.DaveMessage, exc: Exception) -> None:
            # A member's davey session refusing something ends its websocket in discord.py;
            # here it must not take the emulator down, and the other messages still flow.
            self.dave_errors.append((message, exc))
            _log.warning("DAVE op %s for/from %s failed: %s", message.op, message.user_id, exc)

        try:
            external = dave_server.deliver(group, self._local_members(call), messages, trace=trace, on_error=on_error)
        except RuntimeError:  # a protocol loop: the bound in deliver() fired
            _log.exception("DAVE routing ran away in channel %s", call.channel_id)
            external = []
        for message in trace:
            self.dave_log.append(("client" if message.from_client else "server", message.user_id, message.op))
        for message in external:
            await self._dave_send_to_bot(call, message)
        self._dave_arm_timeouts(call)
        self._notify()

    async def _dave_send_to_bot(self, call: _Call, message: dave_server.DaveMessage) -> None:
        session = call.session
        if message.user_id != self.bot_user_id or session is None or session.connection is None:
            _log.debug("DAVE op %s for %s has no live connection: dropped", message.op, message.user_id)
            return
        if isinstance(message, dave_server.DaveBinaryMessage):
            await session.connection.send_binary(message.op, message.payload)
        else:
            await session.connection.send_json(message.op, dict(message.data))

    def _dave_arm_timeouts(self, call: _Call) -> None:
        """Force transitions that members never confirm, as Discord does after a timeout."""
        group = call.dave
        if group is None:
            return
        armed = call.armed_transitions
        for transition_id in group.pending_transitions:
            if transition_id in armed:
                continue
            armed.add(transition_id)

            async def fire(tid: int = transition_id) -> None:
                await asyncio.sleep(dave_server.TRANSITION_TIMEOUT)
                armed.discard(tid)
                if tid in group.pending_transitions and call.dave is group:
                    await self._dave_route(call, group.execute_transition(tid))

            self._spawn(fire(), f"dave-transition-{transition_id}")

    async def _dave_member_join(self, call: _Call, member: SimulatedMember) -> None:
        group = self._dave_group(call)
        member.dave = dave_server.LocalDaveMember(member.user_id, call.channel_id)
        out = group.add_participant(member.user_id, member.dave.max_protocol_version)
        out = list(out) + member.dave.session_description(group.protocol_version)
        await self._dave_route(call, out)

    async def _dave_member_leave(self, call: _Call, member: SimulatedMember) -> None:
        group = self._dave_group(call)
        local = member.dave
        member.dave = None
        if local is not None and member.user_id in group.participants:
            await self._dave_route(call, group.remove_participant(member.user_id))

    async def _dave_bot_join(self, session: VoiceSession) -> None:
        call = self._calls[session.channel_id]
        group = self._dave_group(call)
        if self.bot_user_id in group.participants:  # a previous session that never said goodbye
            await self._dave_route(call, group.remove_participant(self.bot_user_id))
        try:
            out = group.add_participant(self.bot_user_id, session.max_dave_version)
        except dave_server.E2EERequired as exc:
            raise GatewayClose(exc.close_code, "E2EE/DAVE protocol required") from None
        await self._dave_route(call, out)

    async def _dave_bot_reinit(self, session: VoiceSession) -> None:
        # discord.py answers SESSION_DESCRIPTION with a fresh key package (op 26); the group
        # server treats that as the member resetting its MLS state and re-adds it. Nothing
        # to do until it arrives.
        return None

    async def _dave_bot_leave(self, call: _Call) -> None:
        group = call.dave
        if group is not None and self.bot_user_id in group.participants:
            await self._dave_route(call, group.remove_participant(self.bot_user_id))

    async def _dave_from_bot(self, call: _Call, op: int, data: Any) -> None:
        group = self._dave_group(call)
        self.dave_log.append(("client", self.bot_user_id, op))
        try:
            if isinstance(data, (bytes, bytearray)):
                message = dave_server.DaveBinaryMessage(self.bot_user_id, op, bytes(data))
            else:
                message = dave_server.message_from_frame(self.bot_user_id, {"op": op, "d": data})
            out = group.handle(message)
        except dave_server.DaveProtocolError as exc:
            # Discord ignores (or closes on) bad DAVE input; the emulator logs and goes on.
            _log.warning("DAVE op %s from the bot rejected: %s", op, exc)
            return
        await self._dave_route(call, out)

    def _dave_decrypt_from_bot(self, session: VoiceSession, frame: bytes) -> tuple[bytes, str | None]:
        error = "no member in the call can decrypt (no ready DAVE session)"
        for member in self._members_in(session.channel_id):
            if member.dave is None or member.dave.session is None:
                continue
            try:
                return bytes(member.dave.decrypt(self.bot_user_id, frame)), None
            except ValueError as exc:
                error = f"{member.name}: {exc}"
        return frame, error
