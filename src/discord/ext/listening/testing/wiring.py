"""How :class:`.emulator.VoiceServerEmulator` is put together: its settings and collaborators.

:func:`wire` takes the emulator's constructor arguments, checks them once
(:class:`.settings.EmulatorSettings`) and builds the servers and collaborators, each given
what it needs; the facade keeps the :class:`Wiring` it returns and only delegates.
:func:`new_harness` builds the token-less client when the emulator starts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from .bot_media import BotMedia
from .calls import BotSessions, Call, Hooks, Ssrcs
from .dave_routing import DaveRouting
from .gateway import VoiceGatewayServer
from .harness import ClientHarness
from .impairment import Impairment
from .media import MediaServer
from .members import Presence, SimulatedMember
from .sessions import SessionControl
from .settings import EmulatorSettings
from .speaking import Speaker

if TYPE_CHECKING:
    from .emulator import VoiceServerEmulator

__all__ = ("Wiring", "new_harness", "wire")


class Wiring(NamedTuple):
    """What an emulator is made of (the facade's attributes of the same names)."""

    settings: EmulatorSettings
    rng: random.Random
    impairment: Impairment
    gateway: VoiceGatewayServer
    media: MediaServer
    calls: dict[int, Call]
    members: dict[int, SimulatedMember]
    ssrcs: Ssrcs
    bot: BotSessions
    hooks: Hooks
    dave: DaveRouting | None
    bot_media: BotMedia
    presence: Presence
    speaker: Speaker
    control: SessionControl


def wire(
    emulator: VoiceServerEmulator,
    *,
    dave: bool,
    modes: Sequence[str],
    seed: int | None,
    loss: float,
    burst_loss: tuple[float, float] | None,
    reorder: float,
    duplicate: float,
    jitter: float,
    delay: float,
    guild_id: int,
    channel_id: int,
    other_channel_id: int,
    bot_user_id: int,
    bot_name: str,
    speaking_before: bool,
    heartbeat_interval: float,
    answer_delay: float,
    rtcp_interval: float | None,
    resume_session_description: bool,
    require_dave: bool | None,
    goodbye_on_close: bool,
    media_timeout: float | None,
    echo_keepalive: bool,
    ssrc_in_client_connect: bool,
    padding_bursts: float | None,
    padding_burst_size: int,
    sfu_report_interval: float | None,
) -> Wiring:
    """Check ``emulator``'s constructor arguments (the parameters of the same names) and build its parts.

    Raises
    ------
    ValueError
        An argument is out of range, of the wrong type, or contradicts another.
    """
    s = EmulatorSettings(
        dave=bool(dave),
        require_dave=bool(dave) if require_dave is None else bool(require_dave),
        modes=tuple(modes),
        seed=seed,
        guild_id=guild_id,
        channel_id=channel_id,
        other_channel_id=other_channel_id,
        bot_user_id=bot_user_id,
        bot_name=bot_name,
        speaking_before=speaking_before,
        heartbeat_interval=heartbeat_interval,
        answer_delay=answer_delay,
        rtcp_interval=rtcp_interval,
        sfu_report_interval=sfu_report_interval,
        resume_session_description=resume_session_description,
        goodbye_on_close=goodbye_on_close,
        echo_keepalive=bool(echo_keepalive),
        ssrc_in_client_connect=bool(ssrc_in_client_connect),
        padding_bursts=padding_bursts,
        padding_burst_size=padding_burst_size,
    )
    rng = random.Random(seed)
    impairment = Impairment(loss, burst_loss, reorder, duplicate, jitter, delay, seed=rng.getrandbits(63))
    gateway = VoiceGatewayServer(emulator, heartbeat_interval_ms=heartbeat_interval * 1000.0)
    media = MediaServer(emulator, media_timeout=media_timeout)  # validates media_timeout
    calls = {s.channel_id: Call(s.channel_id), s.other_channel_id: Call(s.other_channel_id)}
    members: dict[int, SimulatedMember] = {}
    ssrcs, bot, hooks = Ssrcs(rng), BotSessions(), Hooks()
    # The collaborators, each given the settings, the hooks and what else it needs.
    routing = (
        DaveRouting(settings=s, members_in=lambda channel_id: presence.members_in(channel_id), hooks=hooks)
        if s.dave
        else None
    )
    decrypt_dave = routing.decrypt_from_bot if routing is not None else None
    bot_media = BotMedia(media, bot, impairment, settings=s, hooks=hooks, decrypt_dave=decrypt_dave)
    presence = Presence(
        calls=calls,
        members=members,
        sessions=bot,
        harness=lambda: emulator.harness,
        dave=routing,
        settings=s,
        hooks=hooks,
        ssrcs=ssrcs,
        rng=rng,
    )
    speaker = Speaker(
        bot_media,
        presence,
        settings=s,
        hooks=hooks,
        sender_now=emulator.sender_now,
        to_loop_time=emulator._to_loop_time,
    )
    control = SessionControl(
        bot,
        calls,
        gateway=gateway,
        media=bot_media,
        presence=presence,
        dave=routing,
        harness=lambda: emulator.harness,
        settings=s,
        rng=rng,
        ssrcs=ssrcs,
        hooks=hooks,
    )
    return Wiring(
        s,
        rng,
        impairment,
        gateway,
        media,
        calls,
        members,
        ssrcs,
        bot,
        hooks,
        routing,
        bot_media,
        presence,
        speaker,
        control,
    )


def new_harness(settings: EmulatorSettings, gateway: VoiceGatewayServer, control: SessionControl) -> ClientHarness:
    """The token-less client of a starting emulator, whose op 4 requests ``control`` answers."""
    return ClientHarness(
        guild_id=settings.guild_id,
        channel_ids=(settings.channel_id, settings.other_channel_id),
        bot_user_id=settings.bot_user_id,
        bot_name=settings.bot_name,
        ws_host=gateway.host,
        on_voice_state=control.on_voice_state_request,
    )
