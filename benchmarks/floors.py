"""Raw floors: what the unavoidable steps cost alone, per 20 ms packet, in tight loops.

Run in a fresh process by run.py (prints ``RESULT {json}``). Same corpus as every other
measurement (common.py). CPU time (``time.process_time``/``thread_time``), best of
``--repeat`` passes.

* ``opus_decode``: libopus decode of every corpus frame through the project's own binding
  (:class:`discord.ext.listening.opus.OpusDecoder`: ctypes on the libopus PyAV ships), one
  stateful decoder, in order. Also through discord.py's ``discord.opus.Decoder`` on the same
  libopus, which is what discord-ext-voice-recv decodes with.
* ``aes_gcm`` / ``xchacha``: transport decryption of the RTP packets
  (:class:`~discord.ext.listening.transport.TransportCipher`).
* ``dave``: ``davey.DaveSession.decrypt`` of DAVE frames of another group member (a real MLS
  group of two, made in-process with the emulator's DAVE group server).
* ``udp_recv``: ``socket.recv`` of datagrams already queued on a 127.0.0.1 socket.
* ``udp_wakeup_recv``: ``select`` + ``recv`` with one thread wake-up per packet, the way
  discord.py's ``SocketReader`` reads, packets paced by another process (informative: it is
  the floor of any design that wakes a thread per datagram).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def opus_floor(frames: list[bytes], repeat: int) -> float:
    from discord.ext.listening.opus import OpusDecoder

    def once() -> float:
        dec = OpusDecoder()
        t = time.process_time()
        for f in frames:
            dec.decode(f)
        return (time.process_time() - t) / len(frames)

    return best(once, repeat)


def discordpy_opus_floor(frames: list[bytes], repeat: int) -> float:
    import discord.opus

    from discord.ext.listening.opus import load_for_discord

    load_for_discord()

    def once() -> float:
        dec = discord.opus.Decoder()
        t = time.process_time()
        for f in frames:
            dec.decode(f, fec=False)
        return (time.process_time() - t) / len(frames)

    return best(once, repeat)


def transport_floor(frames: list[bytes], mode: str, repeat: int) -> float:
    from discord.ext.listening.rtp import parse_rtp_header
    from discord.ext.listening.testing.speech import build_rtp_packet
    from discord.ext.listening.transport import transport_cipher

    cipher = transport_cipher(mode, os.urandom(32))
    packets = [
        build_rtp_packet(cipher, i, ssrc=1234, sequence=i & 0xFFFF, timestamp=960 * i, payload=f, audio_level=30)
        for i, f in enumerate(frames)
    ]
    aad = parse_rtp_header(packets[0]).aad_length

    def once() -> float:
        dec = cipher.decrypt
        t = time.process_time()
        for p in packets:
            dec(p, aad)
        return (time.process_time() - t) / len(packets)

    return best(once, repeat)


def dave_floor(frames: list[bytes], repeat: int) -> float:
    import davey

    from discord.ext.listening.testing.dave_member import LocalDaveMember, connect_local_member
    from discord.ext.listening.testing.dave_server import DaveGroupServer

    server = DaveGroupServer(1)
    a, b = LocalDaveMember(11, 1), LocalDaveMember(22, 1)
    connect_local_member(server, a, {})
    connect_local_member(server, b, {11: a})
    assert a.ready and b.ready
    audio = davey.MediaType.audio
    results = []
    for _ in range(repeat):
        sealed = [a.encrypt_opus(f) for f in frames]  # fresh nonces each pass
        dec = b.session.decrypt
        t = time.process_time()
        for s in sealed:
            dec(11, audio, s)
        results.append((time.process_time() - t) / len(sealed))
    return min(results)


def udp_recv_floor(size: int, repeat: int) -> float:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = rx.getsockname()
    payload = bytes(size)
    results = []
    for _ in range(repeat):
        for _ in range(2000):
            tx.sendto(payload, addr)
        n = 0
        t = time.thread_time()
        while True:
            try:
                rx.recv(2048)
                n += 1
            except BlockingIOError:
                break
        results.append((time.thread_time() - t) / max(1, n))
    return min(results)


def udp_wakeup_floor(size: int, rate: int, seconds: float) -> float:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]
    n = int(rate * seconds)
    code = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"p=bytes({size});t0=time.monotonic()+0.3\n"
        f"for i in range({n}):\n"
        f"    w=t0+i/{rate}-time.monotonic()\n"
        "    if w>0.0005: time.sleep(w)\n"
        f"    s.sendto(p,('127.0.0.1',{port}))\n"
    )
    sender = subprocess.Popen([sys.executable, "-c", code])
    got = 0
    t = time.thread_time()
    deadline = time.monotonic() + seconds + 10
    while got < n and time.monotonic() < deadline:
        readable, _, _ = select.select([rx], [], [], 1.0)
        if not readable:
            continue
        try:
            rx.recv(2048)
            got += 1
        except BlockingIOError:
            pass
    cpu = time.thread_time() - t
    sender.wait(10)
    return cpu / max(1, got)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--wakeup-rate", type=int, default=5000)
    p.add_argument("--wakeup-seconds", type=float, default=2.0)
    args = p.parse_args()
    frames = common.speech_frames()
    from discord.ext.listening.transport import AES_GCM, XCHACHA20

    size = 12 + 8 + 4 + 16 + 4 + int(sum(map(len, frames)) / len(frames))
    out = {
        "frames": len(frames),
        "opus_bytes_mean": sum(map(len, frames)) / len(frames),
        "opus_decode_us": 1e6 * opus_floor(frames, args.repeat),
        "discordpy_decoder_us": 1e6 * discordpy_opus_floor(frames, args.repeat),
        "aes_gcm_us": 1e6 * transport_floor(frames, AES_GCM, args.repeat),
        "xchacha_us": 1e6 * transport_floor(frames, XCHACHA20, args.repeat),
        "dave_us": 1e6 * dave_floor(frames, args.repeat),
        "udp_recv_us": 1e6 * udp_recv_floor(size, args.repeat),
        "udp_wakeup_recv_us": 1e6 * udp_wakeup_floor(size, args.wakeup_rate, args.wakeup_seconds),
        "udp_wakeup_rate": args.wakeup_rate,
        "loadavg": os.getloadavg(),
    }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
