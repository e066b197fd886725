"""The SSRC -> user map follows the voice gateway's ops 5, 11, 12 and 13."""

from __future__ import annotations

from discord.ext.listening.ssrc import SSRCMap


def test_gateway_ops_map_and_unmap_ssrcs() -> None:
    m = SSRCMap()
    m.update_from_gateway(11, {"user_ids": ["10", "20"]})
    assert m.connected_users == {10, 20}
    m.update_from_gateway(
        12, {"user_id": "10", "audio_ssrc": 111, "video_ssrc": 112, "streams": [{"ssrc": 113, "rtx_ssrc": 114}]}
    )
    m.update_from_gateway(5, {"user_id": "20", "ssrc": 222, "speaking": 1})
    assert m.user_for(111) == 10 and m.user_for(222) == 20
    assert m.is_video(112) and m.is_video(113) and m.is_video(114) and not m.is_video(111)
    assert m.ssrc_for(20) == 222
    v = m.version
    m.update_from_gateway(13, {"user_id": "10"})
    assert m.user_for(111) is None and not m.is_video(112) and m.version > v
    assert m.connected_users == {20}


def test_a_user_with_a_new_ssrc_loses_the_old_one() -> None:
    m = SSRCMap()
    m.set_audio(1, 5)
    m.set_audio(2, 5)
    assert m.user_for(1) is None and m.user_for(2) == 5
    m.set_audio(2, 6)  # SSRC reused by someone else: the newest owner wins
    assert m.user_for(2) == 6 and m.ssrc_for(5) is None


def test_malformed_gateway_data_is_ignored() -> None:
    m = SSRCMap()
    for op, data in [
        (5, {}),
        (5, {"ssrc": "x", "user_id": 1}),
        (12, None),
        (13, {"user": 1}),
        (12, {"user_id": 1, "streams": [None]}),
    ]:
        m.update_from_gateway(op, data)  # type: ignore[arg-type]
    assert m.user_for(0) is None
    m.update_from_gateway(5, {"ssrc": 0, "user_id": 3})  # 0 is "no stream"
    assert m.ssrc_for(3) is None


def test_an_ssrc_once_announced_as_video_and_then_as_audio_is_audio() -> None:
    m = SSRCMap()
    m.set_video(500, 7)
    m.set_video(501, 7)
    assert m.is_video(500)
    m.set_audio(500, 7)  # the number is reused for audio: its packets must reach the decoder
    assert not m.is_video(500) and m.user_for(500) == 7
    assert m.is_video(501)  # only that number changed
