"""The call's simulated members, and what the bot hears about who is in which call.

:class:`SimulatedMember` is a member simulated in-process (real DAVE session, real Opus,
real RTP); :class:`Presence` creates them, joins and leaves them and tells the bot, as
Discord does: op 11 for everyone in the call, op 12 only for members with video, op 5
SPEAKING when a member starts to speak and, at the bot's connection start, for every
member with a speaking state.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import discord

from .calls import BotSessions, Call, EmulatorError, Hooks, Ssrcs, check_snowflake
from .dave_member import LocalDaveMember
from .faults import DeadEpoch, requested_burst
from .gateway import Op, VoiceSession
from .impairment import PacketImpairment
from .probing import ProbeSchedule
from .speech import RTPSender, SenderClock, SentRecord, SpurtRecord

if TYPE_CHECKING:
    from .audio import AudioInput
    from .dave_routing import DaveRouting
    from .emulator import VoiceServerEmulator
    from .harness import ClientHarness
    from .settings import EmulatorSettings

__all__ = ("Presence", "SimulatedMember", "SpeakingEvent")

SpeakingEvent = Literal["before", "after", "none"]


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
        self._dead_epoch = DeadEpoch(user_id, channel_id)

    @property
    def dead_epoch_frames(self) -> int:
        """Audio frames still to be sealed under a dead DAVE epoch (:meth:`seal_with_dead_epoch`)."""
        return self._dead_epoch.frames

    @dead_epoch_frames.setter
    def dead_epoch_frames(self, frames: int) -> None:
        self._dead_epoch.frames = frames

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
        await self._emulator._presence.join(self, self.home_channel_id if channel is None else channel.id)

    async def leave(self) -> None:
        """Leave the call: CLIENT_DISCONNECT to the bot, DAVE removal, VOICE_STATE_UPDATE.

        Raises
        ------
        EmulatorError
            Not in a call.
        """
        await self._emulator._presence.leave(self)

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
        bursts = requested_burst(padding_burst_at, padding_burst_size, self._emulator.padding_burst_size)
        return await self._emulator._speaker.speak(
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
        self._dead_epoch.arm(frames)

    def _dave_sealer(self) -> LocalDaveMember | None:
        """Whose keys seal this member's next frame (the dead epoch's while the fault lasts)."""
        return self._dead_epoch.sealer(self.dave)

    async def start_speaking(self) -> None:
        """Send SPEAKING (op 5, ``speaking: 1``) now, as the member's client does when it starts
        sending audio: for a test or benchmark that sends the member's packets by other means
        (:meth:`speak` sends it by itself).

        Raises
        ------
        EmulatorError
            The member is not in a call.
        """
        if not self.in_call:
            raise EmulatorError(f"{self.name} is not in a call; join() first")
        await self._emulator._presence.speaking(self)

    async def send_sender_report(self) -> bytes:
        """Send an RTCP sender report for this member now; returns the clear report."""
        return await self._emulator._speaker.send_sender_report(self)


class Presence:
    """Who is in which call, and what the bot hears about it.

    Parameters
    ----------
    calls: dict[:class:`int`, :class:`.calls.Call`]
        The guild's calls by channel id.
    members: dict[:class:`int`, :class:`SimulatedMember`]
        The simulated members by user id.
    sessions: :class:`.calls.BotSessions`
        The bot's sessions (op 5 goes to its current one).
    harness: Callable[[], :class:`.harness.ClientHarness`]
        The client harness (voice states go through it).
    dave: Optional[:class:`.dave_routing.DaveRouting`]
        The DAVE routing; ``None`` without DAVE.
    settings: :class:`.settings.EmulatorSettings`
        The bot's id, the default channel, the probing rate and ``ssrc_in_client_connect``
        (op 12 for every member, not only for those with video).
    hooks: :class:`.calls.Hooks`
        Whether the emulator runs; wakes those waiting for a state change.
    ssrcs: :class:`.calls.Ssrcs`
        Hands out members' SSRCs.
    rng: :class:`random.Random`
        The emulator's seeded generator (members' senders are seeded from it).
    """

    def __init__(
        self,
        *,
        calls: dict[int, Call],
        members: dict[int, SimulatedMember],
        sessions: BotSessions,
        harness: Callable[[], ClientHarness],
        dave: DaveRouting | None,
        settings: EmulatorSettings,
        hooks: Hooks,
        ssrcs: Ssrcs,
        rng: random.Random,
    ) -> None:
        self.calls = calls
        self.members = members
        self.sessions = sessions
        self._harness = harness
        self.dave = dave
        self.settings = settings
        self.ssrc_in_client_connect = settings.ssrc_in_client_connect
        self._hooks = hooks
        self._ssrcs = ssrcs
        self._rng = rng

    async def add(
        self,
        emulator: VoiceServerEmulator,
        user_id: int,
        name: str | None,
        *,
        impairment: PacketImpairment | None,
        clock: str | SenderClock,
        sequence: int | None,
        timestamp: int | None,
        join: bool,
        channel: discord.abc.Snowflake | None,
        ssrc: int | None,
        video: bool,
    ) -> SimulatedMember:
        """:meth:`.VoiceServerEmulator.add_member` (which documents the arguments)."""
        self._hooks.check_running()
        check_snowflake("user_id", user_id)
        if user_id == self.settings.bot_user_id:
            raise EmulatorError("user_id is the bot's own id; members are other users")
        if user_id in self.members:
            raise EmulatorError(f"a member with user id {user_id} already exists")
        try:
            sender_clock = clock if isinstance(clock, SenderClock) else SenderClock(clock)
        except ValueError:
            raise ValueError(f"clock must be 'webrtc' or 'discordpy', got {clock!r}") from None
        if impairment is not None and not callable(getattr(impairment, "apply", None)):
            raise ValueError(f"impairment must be an Impairment (with .apply), got {impairment!r}")
        channel_id = self.settings.channel_id if channel is None else channel.id
        if channel_id not in self.calls:
            raise ValueError(f"channel {channel_id} is not a voice channel of the emulated guild")
        ssrc = self._ssrcs.new() if ssrc is None else self._ssrcs.claim(ssrc)
        sender_seed = self._rng.getrandbits(63)
        probing = None
        if self.settings.padding_bursts is not None and sender_clock is SenderClock.webrtc:
            # Seeded from the sender's seed, not drawn from the emulator's generator: turning
            # probing on or off leaves every other random choice of a seeded emulator as it was.
            probing = ProbeSchedule(
                self.settings.padding_bursts, self.settings.padding_burst_size, random.Random(f"probing:{sender_seed}")
            )
        sender = RTPSender(
            ssrc, sequence=sequence, timestamp=timestamp, clock=sender_clock, rng=sender_seed, probing=probing
        )
        member = SimulatedMember(
            emulator,
            user_id,
            name or f"member-{user_id}",
            ssrc=ssrc,
            video_ssrc=self._ssrcs.new(),
            sender=sender,
            impairment=impairment,
            channel_id=channel_id,
            video=bool(video),
        )
        self.members[user_id] = member
        self._harness().add_member(user_id, member.name)
        if join:
            await self.join(member, channel_id)
        return member

    def members_in(self, channel_id: int) -> list[SimulatedMember]:
        """The simulated members in ``channel_id`` now."""
        return [m for m in self.members.values() if m.channel_id == channel_id]

    async def join(self, member: SimulatedMember, channel_id: int) -> None:
        """:meth:`SimulatedMember.join`."""
        self._hooks.check_running()
        if member.in_call:
            raise EmulatorError(f"{member.name} is already in channel {member.channel_id}; leave() first")
        call = self.calls.get(channel_id)
        if call is None:
            raise ValueError(f"channel {channel_id} is not a voice channel of the emulated guild")
        member.channel_id = channel_id
        member.speaking = False
        self._harness().dispatch_voice_state(member.user_id, channel_id, member.session_id)
        session = call.session
        if session is not None and session.established and session.connection is not None:
            await session.connection.send_json(Op.CLIENTS_CONNECT, {"user_ids": [str(member.user_id)]})
            if self.announces_ssrcs(member):
                await session.connection.send_json(Op.CLIENT_CONNECT, self._client_connect_payload(member))
        if self.dave is not None:
            await self.dave.member_join(call, member)
        self._hooks.notify()

    async def leave(self, member: SimulatedMember) -> None:
        """:meth:`SimulatedMember.leave`."""
        self._hooks.check_running()
        if not member.in_call:
            raise EmulatorError(f"{member.name} is not in a call")
        assert member.channel_id is not None
        call = self.calls[member.channel_id]
        # A spurt in progress stops at its next frame (people do leave mid-sentence).
        member.channel_id = None
        member.speaking = False
        session = call.session
        if session is not None and session.established and session.connection is not None:
            await session.connection.send_json(Op.CLIENT_DISCONNECT, {"user_id": str(member.user_id)})
        if self.dave is not None:
            await self.dave.member_leave(call, member)
        self._harness().dispatch_voice_state(member.user_id, None, member.session_id)
        self._hooks.notify()

    def announces_ssrcs(self, member: SimulatedMember) -> bool:
        """Whether the bot gets op 12 for ``member``: Discord sends it for members with video only."""
        return member.video or self.ssrc_in_client_connect

    async def announce(self, session: VoiceSession) -> None:
        """At the bot's connection start: op 11 for everyone in the call, op 12 for members
        with video, op 5 for every member with a speaking state."""
        assert session.connection is not None
        connection = session.connection
        members = self.members_in(session.channel_id)
        if members:
            await connection.send_json(Op.CLIENTS_CONNECT, {"user_ids": [str(m.user_id) for m in members]})
            for member in members:
                if self.announces_ssrcs(member):
                    await connection.send_json(Op.CLIENT_CONNECT, self._client_connect_payload(member))
            for member in members:
                if member.speaking:
                    await connection.send_json(Op.SPEAKING, self._speaking_payload(member))

    async def speaking(self, member: SimulatedMember) -> None:
        """``member`` starts speaking: op 5 to the bot when it is in that call."""
        # The member told Discord, whether or not the bot is there to hear it now.
        member.speaking = True
        session = self.sessions.current
        if session is None or session.connection is None or session.channel_id != member.channel_id:
            return
        await session.connection.send_json(Op.SPEAKING, self._speaking_payload(member))

    @staticmethod
    def _speaking_payload(member: SimulatedMember) -> dict[str, Any]:
        return {"user_id": str(member.user_id), "ssrc": member.ssrc, "speaking": 1}

    @staticmethod
    def _client_connect_payload(member: SimulatedMember) -> dict[str, Any]:
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
