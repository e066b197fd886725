"""Simulated members speaking: op 5, talk spurts, sealing, pacing, sender reports.

:class:`Speaker` turns a member's audio into a spurt (:class:`.speech.RTPSender`), seals
each frame as the member's client would (DAVE, then transport; padding-only probe
packets with transport only) and puts the packets on the member's impaired path to the
bot, paced in real time or as fast as possible with the same order of arrival.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..dave import is_silence
from .bot_media import BotMedia
from .calls import EmulatorError, Hooks
from .media import TransportLink
from .members import Presence, SimulatedMember, SpeakingEvent
from .probing import PaddingBurst
from .speech import OutgoingFrame, SenderClock, SpurtRecord

if TYPE_CHECKING:
    from .audio import AudioInput
    from .settings import EmulatorSettings

__all__ = ("Speaker",)


class Speaker:
    """Makes simulated members speak to the bot.

    Parameters
    ----------
    media: :class:`.bot_media.BotMedia`
        The media path to the bot.
    presence: :class:`.members.Presence`
        The members and op 5.
    settings: :class:`.settings.EmulatorSettings`
        ``dave`` (seal audio with DAVE) and ``speaking_before`` (default op 5 timing:
        ``"before"`` the first packet when true, else ``"after"``).
    hooks: :class:`.calls.Hooks`
        Whether the emulator runs; waits for members' DAVE sessions.
    sender_now, to_loop_time:
        The senders' clock (Unix time) and its conversion to event-loop time.
    """

    def __init__(
        self,
        media: BotMedia,
        presence: Presence,
        *,
        settings: EmulatorSettings,
        hooks: Hooks,
        sender_now: Callable[[], float],
        to_loop_time: Callable[[float], float],
    ) -> None:
        self.media = media
        self.presence = presence
        self.dave_enabled = settings.dave
        self.speaking_before = settings.speaking_before
        self._hooks = hooks
        self._sender_now = sender_now
        self._to_loop_time = to_loop_time

    async def speak(
        self,
        member: SimulatedMember,
        audio: AudioInput,
        *,
        realtime: bool,
        speaking_event: SpeakingEvent | None,
        padding: int,
        padding_bursts: dict[int, int],
    ) -> SpurtRecord:
        """:meth:`.SimulatedMember.speak`, its burst request checked (``padding_bursts``)."""
        self._hooks.check_running()
        if speaking_event is None:
            speaking_event = "before" if self.speaking_before else "after"
        if speaking_event not in ("before", "after", "none"):
            raise ValueError(f"speaking_event must be 'before', 'after' or 'none', got {speaking_event!r}")
        if not 0 <= padding <= 255:
            raise ValueError(f"padding must be 0..255 bytes, got {padding!r}")
        if self.presence.members.get(member.user_id) is not member:
            raise EmulatorError(f"{member!r} does not belong to this emulator")
        if not member.in_call:
            raise EmulatorError(f"{member.name} is not in a call; join() first")
        self.media.route(member.channel_id)  # fail early and clearly: nobody to speak to
        if self.dave_enabled:
            try:
                await self._hooks.wait_until(
                    lambda: member.dave is not None and member.dave.ready,
                    timeout=10.0,
                    what=f"{member.name}'s DAVE session",
                )
            except TimeoutError:
                raise EmulatorError(f"{member.name} has no ready DAVE session: is the bot in the call?") from None
        async with member._speak_lock:
            record = member.sender.record
            start = self._sender_now()
            if record.spurts:
                start = max(start, record.spurts[-1].end)
            frames = member.sender.talk(audio, start, padding_bursts=padding_bursts)
            spurt = record.spurts[-1]
            bursts = {burst.before_frame: burst for burst in spurt.padding_bursts}
            if speaking_event == "before":
                await self.presence.speaking(member)
            if realtime:
                await self._speak_realtime(member, frames, bursts, speaking_event == "after", padding)
            else:
                await self._speak_fast(member, frames, bursts, speaking_event == "after", padding)
            return spurt

    def _member_link(self, member: SimulatedMember) -> TransportLink | None:
        """The transport link ``member``'s packets are sealed with now (``None``: nobody to send to)."""
        try:
            _, link, _ = self.media.route(member.channel_id)
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
                for _, probe in self._seal_burst(member, burst) if member.in_call else ():
                    self.media.send_from(member, probe, loop.time())
            await self._sleep_until(frame.send_time)
            if not member.in_call:
                return
            packet = self._seal_frame(member, frame, padding)
            if packet is None:
                continue
            on_wire = self.media.send_from(member, packet, loop.time())
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
            _, _, address = self.media.route(member.channel_id)
        except EmulatorError:
            member.packets_unroutable += len(frames)
            return
        path = self.media.member_path(member)
        deliveries: list[tuple[float, int, bytes]] = []
        latency = float("inf")
        for i, frame in enumerate(frames):
            if i and i % 50 == 0:
                await asyncio.sleep(0)  # keep the loop (and the bot) responsive while we build
            burst = bursts.get(i)
            for send_time, probe in self._seal_burst(member, burst) if burst is not None else ():
                member.packets_sent += 1
                for arrival, data in path.apply(probe, send_time):
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
            self.media.media.schedule(data, address, deliver_at, first_sent if index == 0 else None)
        if speaking_after:
            await self._speaking_after(member, first if any(d[1] == 0 for d in deliveries) else None)

    async def _speaking_after(self, member: SimulatedMember, on_wire: asyncio.Future[None] | None) -> None:
        if on_wire is not None:
            # The first packet is on the wire before op 5 (bounded: impairment may delay it).
            await asyncio.wait([on_wire], timeout=2.0)
        await self.presence.speaking(member)

    async def send_sender_report(self, member: SimulatedMember) -> bytes:
        """:meth:`.SimulatedMember.send_sender_report`."""
        _, link, _ = self.media.route(member.channel_id)
        clear = member.sender.sender_report(self._sender_now())
        self.media.send_from(member, link.seal_rtcp(clear), asyncio.get_running_loop().time())
        return clear

    async def rtcp_loop(self, interval: float) -> None:
        """Send a sender report every ``interval`` seconds for every webrtc member in a call that spoke."""
        while True:
            await asyncio.sleep(interval)
            for member in list(self.presence.members.values()):
                if not member.in_call or member.sender.clock is not SenderClock.webrtc or not member.sent.spurts:
                    continue
                try:
                    await self.send_sender_report(member)
                except EmulatorError:
                    continue
