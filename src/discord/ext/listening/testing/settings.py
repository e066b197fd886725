"""The emulator's settings: its constructor arguments, checked once.

:class:`EmulatorSettings` holds what :class:`.emulator.VoiceServerEmulator` was built with
(the parameters of the same names, described there); creating it checks them, so that a
bad argument fails at construction and not at the first member or connection. The
collaborators read the switches they need from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..transport import SUPPORTED_MODES
from .calls import check_snowflake
from .probing import ProbeSchedule, check_burst_size

__all__ = ("EmulatorSettings",)


@dataclass(frozen=True)
class EmulatorSettings:
    """What an emulator was built with (:class:`.emulator.VoiceServerEmulator`'s parameters).

    Raises
    ------
    ValueError
        An argument is out of range, of the wrong type, or contradicts another.
    """

    dave: bool
    require_dave: bool
    modes: tuple[str, ...]
    seed: int | None
    guild_id: int
    channel_id: int
    other_channel_id: int
    bot_user_id: int
    bot_name: str
    speaking_before: bool
    heartbeat_interval: float
    answer_delay: float
    rtcp_interval: float | None
    sfu_report_interval: float | None
    resume_session_description: bool
    goodbye_on_close: bool
    echo_keepalive: bool
    ssrc_in_client_connect: bool
    padding_bursts: float | None
    padding_burst_size: int

    def __post_init__(self) -> None:
        modes = self.modes
        if not modes:
            raise ValueError("modes must offer at least one encryption mode")
        for mode in modes:
            if mode not in SUPPORTED_MODES:
                raise ValueError(f"unsupported mode {mode!r}; choose from {', '.join(SUPPORTED_MODES)}")
        if len(set(modes)) != len(modes):
            raise ValueError(f"modes lists a mode twice: {modes!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        for name in ("guild_id", "channel_id", "other_channel_id", "bot_user_id"):
            check_snowflake(name, getattr(self, name))
        if len({self.guild_id, self.channel_id, self.other_channel_id}) != 3:
            raise ValueError("guild_id, channel_id and other_channel_id must be distinct")
        if self.heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive seconds, got {self.heartbeat_interval!r}")
        if not 0 <= self.answer_delay <= 5:
            raise ValueError(f"answer_delay must be 0..5 seconds, got {self.answer_delay!r}")
        for name in ("rtcp_interval", "sfu_report_interval"):
            interval = getattr(self, name)
            if interval is not None and interval <= 0:
                raise ValueError(f"{name} must be positive seconds or None, got {interval!r}")
        if self.padding_bursts is not None:
            ProbeSchedule(self.padding_bursts, self.padding_burst_size)  # checks both
        check_burst_size(self.padding_burst_size)
