"""Faults the emulator injects on demand: hostile datagrams, dead-epoch frames, probe bursts.

- :func:`inject`: datagrams straight to the bot, past every impairment (garbage, a bad
  tag, an SSRC nobody announced, video, raw bytes): :meth:`.VoiceServerEmulator.inject`.
- :class:`DeadEpoch`: a member's next frames sealed under a DAVE epoch the bot never held:
  :meth:`.SimulatedMember.seal_with_dead_epoch`.
- :func:`requested_burst`: a padding burst asked for in one spurt, on top of the planned
  ones: ``speak(padding_burst_at=...)``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from ..opus import SILENCE_FRAME
from .dave_member import LocalDaveMember, stale_epoch_member
from .impairment import garbage_datagram, unknown_ssrc_packet, video_packet, with_wrong_tag
from .probing import check_burst_size

if TYPE_CHECKING:
    from .bot_media import BotMedia
    from .members import SimulatedMember

__all__ = ("DeadEpoch", "FaultKind", "inject", "requested_burst")

FaultKind = Literal["garbage", "wrong_tag", "unknown_ssrc", "video", "raw"]


async def inject(
    media: BotMedia,
    kind: FaultKind,
    *,
    rng: random.Random,
    new_ssrc: Callable[[], int],
    member: SimulatedMember | None,
    ssrc: int | None,
    count: int,
    size: int | None,
    payload: bytes | None,
    payload_type: int,
) -> list[bytes]:
    """Send hostile or foreign datagrams to the bot now; :meth:`.VoiceServerEmulator.inject`."""
    if kind not in ("garbage", "wrong_tag", "unknown_ssrc", "video", "raw"):
        raise ValueError(f"unknown fault kind {kind!r}; use garbage, wrong_tag, unknown_ssrc, video or raw")
    if not 1 <= count <= 10000:
        raise ValueError(f"count must be 1..10000, got {count!r}")
    _session, link, address = media.route()
    out: list[bytes] = []
    for i in range(count):
        if kind == "garbage":
            data = garbage_datagram(rng, size)
        elif kind == "raw":
            if payload is None:
                raise ValueError("inject('raw') needs payload=bytes")
            data = bytes(payload)
        elif kind == "unknown_ssrc":
            target = ssrc if ssrc is not None else new_ssrc()
            data = unknown_ssrc_packet(
                link.cipher, link.next_counter(), ssrc=target, sequence=i & 0xFFFF, timestamp=(i * 960) & 0xFFFFFFFF
            )
        elif kind == "video":
            video_ssrc = ssrc if ssrc is not None else (member.video_ssrc if member is not None else None)
            if video_ssrc is None:
                raise ValueError("inject('video') needs member= or ssrc=")
            data = video_packet(
                link.cipher,
                link.next_counter(),
                ssrc=video_ssrc,
                sequence=i & 0xFFFF,
                payload_type=payload_type,
                rng=rng,
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
        media.media.send_now(data, address)
        out.append(data)
    await asyncio.sleep(0)
    return out


class DeadEpoch:
    """One member's dead-epoch fault: how many frames are still to be sealed under it.

    Parameters
    ----------
    user_id, channel_id: :class:`int`
        The member and the channel its keys are made for.
    """

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        #: Audio frames still to be sealed under the dead epoch.
        self.frames = 0
        self._sealer: LocalDaveMember | None = None

    def arm(self, frames: int) -> None:
        """Seal the next ``frames`` audio frames under the dead epoch (``ValueError`` unless 0..100000)."""
        if isinstance(frames, bool) or not isinstance(frames, int) or not 0 <= frames <= 100000:
            raise ValueError(f"frames must be 0..100000, got {frames!r}")
        if frames and self._sealer is None:
            self._sealer = stale_epoch_member(self.user_id, self.channel_id)
        self.frames = frames

    def sealer(self, live: LocalDaveMember | None) -> LocalDaveMember | None:
        """Whose keys seal the member's next frame: the dead epoch's while the fault lasts, else ``live``."""
        if self.frames and self._sealer is not None:
            self.frames -= 1
            return self._sealer
        return live


def requested_burst(at: int | None, size: int | None, default_size: int) -> dict[int, int]:
    """The burst ``speak(padding_burst_at=at, padding_burst_size=size)`` asks for: ``{before_frame: packets}``."""
    if at is None:
        if size is not None:
            raise ValueError("padding_burst_size needs padding_burst_at")
        return {}
    return {at: check_burst_size(default_size if size is None else size)}
