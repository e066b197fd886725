"""Benchmarks of discord-ext-listening's receive path, in one command.

    python3 dev.py bench            # the full run (about 8 minutes on a 2-core machine)
    python3 dev.py bench --quick    # a ~2 minute smoke version: every section, one point each

Prints one table and writes every number to ``benchmarks/results/latest.json``.
Everything runs on this machine: local voice servers (the project's emulator) on 127.0.0.1,
a sender process, and the bot's processes. Each measurement is a fresh process
(``scenario.py`` / ``floors.py``). discord-ext-voice-recv runs from its own environment,
``benchmarks/.venv-voicerecv``, which this script creates (``python -m venv`` + pip) and
never adds to the project's dependencies. See BENCHMARKS.md for what each row means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VR_VENV = HERE / ".venv-voicerecv"
VR_PY = VR_VENV / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
VR_REQUIREMENTS = ["discord-ext-voice-recv", "psutil"]
RESULTS = HERE / "results"

# Issue 12 ("one receive engine per process"): its targets, measured by the growth rows
# (per-packet cost, with these targets) and by the engine section.
#: Speakers in one guild, decoding -> CPU per packet at most this many times the libopus floor.
DECODE_FLOOR_RATIO = {1: 3.0, 10: 1.5, 100: 1.3}
#: Speakers in one guild, decode off -> CPU microseconds per packet at most.
PASSTHROUGH_US = {10: 25.0, 100: 10.0}
IDLE_MS_PER_CONNECTION = 0.5  # CPU ms a second that listening may add to a silent connection
IDLE_JUDGED_AT = (10, 200)  # connections
IDLE_CURVE = [1, 10, 50, 100, 200, 500]
MANY_GUILDS_VS_VOICE_RECV = 5.0  # many-guild capacity, 2 workers / voice-recv's one-guild capacity
SPREAD_MIN_SHARE = 0.30  # one guild of 100 speakers, 2 workers: the less busy worker's share of their CPU
LATENCY_MARGIN_MS = 10.0  # p99 arrival-to-sink at 80% of capacity <= jitter depth + this
MEMORY_KIB_PER_SPEAKER = 100.0
MEMORY_GROWTH_KIB_PER_SPEAKER = 10.0  # "flat": growth over the long window, a tenth of the budget

sys.path.insert(0, str(HERE))
import common  # noqa: E402
from discord.ext.listening.pool import SPEAKERS_PER_WORKER  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the comparison environment --------------------------------------------------------------


def ensure_voicerecv_env(refresh: bool) -> str | None:
    """Create or refresh benchmarks/.venv-voicerecv; returns an error text if it cannot."""
    stamp = VR_VENV / ".bench-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(VR_REQUIREMENTS).encode()).hexdigest()
    if not refresh and VR_PY.exists() and stamp.exists() and stamp.read_text() == want:
        return None
    log(
        f"{'refreshing' if VR_PY.exists() else 'creating'} {VR_VENV.relative_to(ROOT)} "
        "(discord-ext-voice-recv from PyPI + this project for its voice server emulator)"
    )
    if not VR_PY.exists():
        done = subprocess.run([sys.executable, "-m", "venv", str(VR_VENV)], capture_output=True, text=True)
        if done.returncode:
            return f"python -m venv failed: {done.stderr.strip()[-500:]}"
    cmd = [
        str(VR_PY),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--upgrade",
        *VR_REQUIREMENTS,
        "-e",
        str(ROOT),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        return f"pip install failed: {(done.stdout + done.stderr).strip()[-800:]}"
    stamp.write_text(want)
    return None


def voicerecv_version() -> str:
    done = subprocess.run(
        [
            str(VR_PY),
            "-c",
            "import importlib.metadata as m; print(m.version('discord-ext-voice-recv'), m.version('discord.py'))",
        ],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "?"


# -- running measurements ----------------------------------------------------------------


def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}"}


def timed_run(cmd: list[str], timeout: float, label: str, describe: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """:func:`run_json` with its wall time noted and one line of log (``describe`` of the result)."""
    t = time.monotonic()
    r = run_json(cmd, timeout=timeout)
    r["wall_s"] = time.monotonic() - t
    log(f"  {label}: ERROR {r['error']}" if "error" in r else f"  {label}: {describe(r)}")
    return r


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.seconds = 2.0 if args.quick else 3.0
        self.results: dict[str, Any] = {"machine": common.machine(), "quick": args.quick, "started": time.time()}
        # What listen() uses when not told (scenario.py does not tell it); latency targets add to it.
        self.results["jitter_depth_s"] = common.default_jitter_depth()
        self.trials: list[dict[str, Any]] = []

    def scenario(
        self,
        library: str = "listening",
        *,
        speakers: int,
        guilds: int = 1,
        decode: bool = True,
        workers: int = 1,
        dave: bool = False,
        mode: str = "aes",
        seconds: float | None = None,
    ) -> dict[str, Any]:
        py = sys.executable if library == "listening" else str(VR_PY)
        cmd = [
            py,
            str(HERE / "scenario.py"),
            "--library",
            library,
            "--speakers",
            str(speakers),
            "--guilds",
            str(guilds),
            "--decode",
            str(int(decode)),
            "--workers",
            str(workers),
            "--dave",
            str(int(dave)),
            "--mode",
            mode,
            "--seconds",
            str(seconds or self.seconds),
            "--late-ms",
            str(self.args.late_ms),
        ]
        r = timed_run(
            cmd,
            240,
            f"{library} {guilds}x{speakers} decode={int(decode)} w={workers} dave={int(dave)} {mode}",
            lambda r: (
                f"{r['cpu_us_per_packet']:.1f} us/pkt, bad {100 * r['bad_fraction']:.2f}%, "
                f"p50/p99 {r['latency_p50_ms']:.1f}/{r['latency_p99_ms']:.1f} ms, load {r['loadavg'][0]:.2f}"
            ),
        )
        r.setdefault("library", library)
        self.trials.append(r)
        return r

    @staticmethod
    def sustained(r: dict[str, Any]) -> bool:
        return "error" not in r and r["bad_fraction"] <= 0.001

    def capacity(
        self, label: str, run: Callable[[int], dict[str, Any]], start: int, step: int, lo: int = 0, max_trials: int = 6
    ) -> dict[str, Any]:
        """Largest n (a multiple of ``step``) for which ``run(n)`` is sustained."""
        log(f"capacity: {label}")
        good: tuple[int, dict[str, Any]] | None = None
        bad: int | None = None
        n = max(step, round(start / step) * step)
        tried: dict[int, dict[str, Any]] = {}
        for _ in range(max_trials):
            r = run(n)
            tried[n] = r
            if self.sustained(r):
                good = (n, r) if good is None or n > good[0] else good
            else:
                bad = n if bad is None or n < bad else bad
            if bad is None:
                n = math.ceil(n * 1.3 / step) * step
            elif good is None:
                n = max(step, int(n * 0.7 / step) * step)
                if n in tried:
                    break
            else:
                if bad - good[0] <= max(step, good[0] // 12):
                    break
                n = (good[0] + bad) // 2 // step * step
                if n in tried:
                    break
        out = {
            "label": label,
            "max": good[0] if good else 0,
            "first_failure": bad,
            "trials": {str(k): _brief(v) for k, v in sorted(tried.items())},
        }
        if good:
            out["at_max"] = good[1]
        return out

    # -- sections ----------------------------------------------------------------------

    def floors(self) -> None:
        log("raw floors")
        r = run_json([sys.executable, str(HERE / "floors.py"), "--repeat", "2" if self.quick else "4"], timeout=180)
        self.results["floors"] = r
        if "error" in r:
            log(f"  floors failed: {r['error']}")
        else:
            log(
                f"  opus {r['opus_decode_us']:.1f} us, aes {r['aes_gcm_us']:.1f}, xchacha {r['xchacha_us']:.1f}, "
                f"dave {r['dave_us']:.1f}, recv {r['udp_recv_us']:.1f}"
            )

    def growth(self, decode_points: list[int], passthrough_points: list[int]) -> None:
        log("per-packet CPU as speakers grow (one guild, AES-GCM; DAVE on up to 10 speakers)")
        rows = []
        for n in decode_points:
            dave = n <= 10
            rows.append(self.scenario(speakers=n, decode=True, workers=1, dave=dave))
        for n in passthrough_points:
            dave = n <= 10
            rows.append(self.scenario(speakers=n, decode=False, dave=dave))
        self.results["growth"] = rows

    def comparison(self) -> None:
        log("discord-ext-voice-recv vs this project, same packets, XChaCha20, DAVE off")
        rows = []
        for n in [10] if self.quick else [10, 100]:
            for decode in (True, False):
                rows.append(self.scenario(speakers=n, decode=decode, workers=1, mode="xchacha"))
                rows.append(self.scenario("voice_recv", speakers=n, decode=decode, mode="xchacha"))
        self.results["comparison"] = rows

    def capacities(self) -> None:
        caps = {}
        if self.quick:
            # One point per configuration instead of a search: does it still run, and hold?
            caps["listening_50g_2w"] = self.capacity(
                "many guilds (G x 5 speakers), decode, 2 workers [quick: one point]",
                lambda n: self.scenario(speakers=5, guilds=n // 5, decode=True, workers=2),
                30,
                5,
                max_trials=1,
            )
            if self.results.get("voice_recv_error") is None:
                caps["voice_recv"] = self.capacity(
                    "discord-ext-voice-recv, one guild, decode (XChaCha20, DAVE off) [quick: one point]",
                    lambda n: self.scenario("voice_recv", speakers=n, decode=True, mode="xchacha"),
                    15,
                    5,
                    max_trials=1,
                )
                caps["listening_xchacha_1g_2w"] = self.capacity(
                    "this project, same packets (XChaCha20, DAVE off), decode, 2 workers [quick: one point]",
                    lambda n: self.scenario(speakers=n, decode=True, workers=2, mode="xchacha"),
                    45,
                    5,
                    max_trials=1,
                )
            self.results["capacity"] = caps
            return
        trials = 8  # enough to bracket from --start at 1.3x steps and then bisect
        est = self.args.start
        caps["listening_1g_1w"] = c = self.capacity(
            "one guild, decode, 1 worker",
            lambda n: self.scenario(speakers=n, decode=True, workers=1),
            est,
            10,
            max_trials=trials,
        )
        base = max(c["max"], 20)
        caps["listening_1g_2w"] = self.capacity(
            "one guild, decode, 2 workers",
            lambda n: self.scenario(speakers=n, decode=True, workers=2),
            base * 1.3,
            10,
            max_trials=trials,
        )
        if True:
            caps["listening_50g_1w"] = c1 = self.capacity(
                "many guilds (G x 5 speakers), decode, 1 worker",
                lambda n: self.scenario(speakers=5, guilds=n // 5, decode=True, workers=1),
                base,
                10,
                max_trials=trials,
            )
            caps["listening_50g_2w"] = self.capacity(
                "many guilds (G x 5 speakers), decode, 2 workers",
                lambda n: self.scenario(speakers=5, guilds=n // 5, decode=True, workers=2),
                max(c1["max"], 20) * 1.5,
                10,
                max_trials=trials,
            )
        if not self.quick:
            caps["listening_passthrough"] = self.capacity(
                "one guild, decode=False",
                lambda n: self.scenario(speakers=n, decode=False),
                base * 2.5,
                20,
                max_trials=trials,
            )
        if self.results.get("voice_recv_error") is None:
            caps["voice_recv"] = self.capacity(
                "discord-ext-voice-recv, one guild, decode (XChaCha20, DAVE off)",
                lambda n: self.scenario("voice_recv", speakers=n, decode=True, mode="xchacha"),
                max(10, base // 3),
                5,
                max_trials=trials,
            )
            caps["listening_xchacha_1g_2w"] = self.capacity(
                "this project, same packets (XChaCha20, DAVE off), decode, 2 workers",
                lambda n: self.scenario(speakers=n, decode=True, workers=2, mode="xchacha"),
                caps["listening_1g_2w"]["max"] or base,
                10,
                max_trials=trials,
            )
        self.results["capacity"] = caps

    def stream(self) -> None:
        log("the event-loop path: AudioStream frames, utterances, live mix (in-process)")
        r = run_json(
            [sys.executable, str(HERE / "bench_stream.py"), "--repeat", "2" if self.quick else "3"], timeout=300
        )
        self.results["stream"] = r
        if "error" in r:
            log(f"  stream failed: {r['error']}")
        log("voice activity detectors on our speech and noise")
        self.results["vad"] = run_json([sys.executable, str(HERE / "bench_vad.py")], timeout=300)

    def speech(self) -> None:
        log("speech to text: PocketSphinx, faster-whisper (a tiny random model, then tiny.en)")
        self.results["speech"] = run_json([sys.executable, str(HERE / "bench_speech.py")], timeout=900)

    def formats(self) -> None:
        log("file formats: CPU to write a second of speech and of silence")
        self.results["formats"] = run_json([sys.executable, str(HERE / "bench_formats.py")], timeout=300)

    def redis(self) -> None:
        log("Redis: what publishing costs the bot, and what recording costs a worker")
        self.results["redis"] = run_json([sys.executable, str(HERE / "bench_redis.py")], timeout=600)

    def dave_at_scale(self) -> None:
        # Near the many-guild capacity measured without DAVE (80% of it), so that the run
        # says what DAVE costs there rather than that an overload is an overload.
        cap = self.results.get("capacity", {}).get("listening_50g_2w", {}).get("max") or 50
        g = 2 if self.quick else max(2, int(0.8 * cap / 5))
        log(f"DAVE on at scale: {g} guilds x 5 speakers, decode, 2 workers")
        self.results["dave_scale"] = self.scenario(speakers=5, guilds=g, decode=True, workers=2, dave=True)

    def idle(self, connections: int) -> dict[str, Any]:
        cmd = [sys.executable, str(HERE / "engine_idle.py"), "--connections", str(connections)]
        cmd += ["--seconds", "3" if self.quick else "5"]
        r = timed_run(
            cmd,
            600,
            f"idle x{connections}",
            lambda r: (
                f"connected {r['connected_cpu_ms_per_s']:.1f} ms CPU/s, listening {r['listening_cpu_ms_per_s']:.1f} "
                f"(+{r['added_ms_per_s_per_connection']:.2f} a connection), servers (not counted) "
                f"{r['listening_servers_cpu_ms_per_s']:.1f}, load {r['loadavg'][0]:.2f}"
            ),
        )
        r.setdefault("connections", connections)
        return r

    def engine(self) -> None:
        """Issue 12's targets on whatever engine this tree has (BENCHMARKS.md, "engine")."""
        eng: dict[str, Any] = {}
        self.results["engine"] = eng
        log("engine (issue 12): silent listening connections")
        eng["idle"] = [self.idle(n) for n in ([1, 10] if self.quick else IDLE_CURVE)]

        # Per-packet cost against the floor, decoding or not: the growth rows carry issue 12's
        # targets; measured here only if those sections did not run.
        if "floors" not in self.results:
            self.floors()
        if "growth" not in self.results:
            if self.quick:
                self.growth([10], [100])
            else:
                self.growth(sorted(DECODE_FLOOR_RATIO), sorted(PASSTHROUGH_US))

        caps = self.results.get("capacity", {})
        tag = " [quick: one point]" if self.quick else ""
        trials = 1 if self.quick else 8
        if "listening_50g_2w" not in caps:
            eng["g5"] = self.capacity(
                f"many guilds (G x 5 speakers), decode, 2 workers{tag}",
                lambda n: self.scenario(speakers=5, guilds=n // 5, decode=True, workers=2),
                30 if self.quick else 150,
                5 if self.quick else 10,
                max_trials=trials,
            )
        g5 = eng.get("g5") or caps["listening_50g_2w"]
        eng["g3"] = self.capacity(
            f"many guilds (G x 3 speakers), decode, 2 workers{tag}",
            lambda n: self.scenario(speakers=3, guilds=n // 3, decode=True, workers=2),
            30 if self.quick else max(30, g5["max"]),
            3 if self.quick else 15,
            max_trials=trials,
        )
        if "voice_recv" not in caps and self.results.get("voice_recv_error") is None:
            eng["voice_recv"] = self.capacity(
                f"discord-ext-voice-recv, one guild, decode (XChaCha20, DAVE off){tag}",
                lambda n: self.scenario("voice_recv", speakers=n, decode=True, mode="xchacha"),
                15 if self.quick else 60,
                5,
                max_trials=trials,
            )

        log("engine: one guild of 100 speakers, 2 workers: does it use both?")
        eng["spread"] = self.scenario(speakers=100, decode=True, workers=2)

        # Latency and memory over a longer window, at 80% of the many-guild capacity (G x 5
        # speakers, 2 workers: the bots issue 12 is about).
        # The memory a speaker is the difference with a smaller run that still has audio on
        # both workers (speakers fill one worker before the next): what both runs allocate
        # alike (each decode worker warming up on its first frames: ~6 MiB) cancels out.
        small = SPEAKERS_PER_WORKER // 5 + 2
        g = max(2 * small, round(0.8 * (g5["max"] or 25) / 5))
        log(f"engine: {g} guilds x 5 speakers (80% of capacity), decode, 2 workers, a long window")
        eng["at_80"] = self.scenario(speakers=5, guilds=g, decode=True, workers=2, seconds=6.0 if self.quick else 20.0)
        eng["small"] = self.scenario(speakers=5, guilds=small, decode=True, workers=2)


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "cpu_us_per_packet",
        "cpu_cores",
        "bad_fraction",
        "lost",
        "late",
        "latency_p50_ms",
        "latency_p99_ms",
        "udp_drops",
        "error",
        "loadavg",
    )
    return {k: r[k] for k in keys if k in r}


# -- the table -----------------------------------------------------------------------------


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def table(res: dict[str, Any], late_ms: float) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    fl = res.get("floors", {})
    floor = fl.get("opus_decode_us")
    jitter_ms = 1000 * (res.get("jitter_depth_s") or 0.06)  # the library's default (run.py reads it)

    def add(section: str, case: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((section, case, value, target, "" if ok is None else ("yes" if ok else "NO")))

    if "error" not in fl and fl:
        add("1 floor", "libopus decode, project binding (OpusDecoder)", f"{fl['opus_decode_us']:.1f} us")
        add("1 floor", "libopus decode, discord.py Decoder (same lib)", f"{fl['discordpy_decoder_us']:.1f} us")
        add("1 floor", "transport decrypt AES-256-GCM", f"{fl['aes_gcm_us']:.1f} us")
        add("1 floor", "transport decrypt XChaCha20-Poly1305", f"{fl['xchacha_us']:.1f} us")
        add("1 floor", "DAVE decrypt (davey)", f"{fl['dave_us']:.1f} us")
        add("1 floor", "UDP recv of a queued datagram", f"{fl['udp_recv_us']:.1f} us")
        add(
            "1 floor",
            f"UDP select+recv, a wake-up per packet ({fl['udp_wakeup_rate']}/s)",
            f"{fl['udp_wakeup_recv_us']:.1f} us",
        )

    for r in res.get("growth", []):
        if "error" in r:
            add("2/5 cost", f"{r.get('speakers')} speakers", "error")
            continue
        case = (
            f"{r['speakers']:>4} speakers decode={'on ' if r['decode'] else 'off'} "
            f"{'DAVE+AES' if r['dave'] else 'AES'}{' 1 worker' if r['decode'] else ''}"
        )
        cpu = r["cpu_us_per_packet"]
        ok_run = r["bad_fraction"] <= 0.001 and r.get("window_valid", True)
        note = (
            "" if ok_run else f" (NOT sustained: {100 * r['bad_fraction']:.1f}% bad; CPU per packet sent understates)"
        )
        # Issue 12's targets where it sets one (all of the bot's processes counted).
        if r["decode"]:
            ratio = cpu / floor if floor else float("nan")
            value = f"{cpu:.1f} us/pkt = {ratio:.2f}x floor{note}"
            limit = DECODE_FLOOR_RATIO.get(r["speakers"])
            target = f"<= {limit}x floor" if limit else ""
            add("2/5 cost", case, value, target, ratio <= limit if limit and ok_run and floor else None)
        else:
            limit = PASSTHROUGH_US.get(r["speakers"])
            target = f"<= {limit:.0f} us" if limit else ""
            add("2/5 cost", case, f"{cpu:.1f} us/pkt{note}", target, cpu <= limit if limit and ok_run else None)
        mem = (r["uss_after_mb"] - r["uss_before_mb"]) * 1024 / max(1, r["speakers"])
        if r["speakers"] >= 100:
            add("5 memory", case, f"{mem:.0f} KiB/speaker")

    caps = res.get("capacity", {})
    for key, c in caps.items():
        at = c.get("at_max") or {}
        lat = f", p50/p99 {fmt(at.get('latency_p50_ms'))}/{fmt(at.get('latency_p99_ms'))} ms" if at else ""
        target, ok = "", None
        if key == "listening_1g_2w" and "listening_1g_1w" in caps and caps["listening_1g_1w"]["max"]:
            r = c["max"] / caps["listening_1g_1w"]["max"]
            target, ok = f">= 1.7x 1 worker (is {r:.2f}x)", r >= 1.7
        if key == "listening_50g_2w" and "listening_50g_1w" in caps and caps["listening_50g_1w"]["max"]:
            r = c["max"] / caps["listening_50g_1w"]["max"]
            target, ok = f">= 1.7x 1 worker (is {r:.2f}x)", r >= 1.7
        if key == "listening_xchacha_1g_2w" and caps.get("voice_recv", {}).get("max"):
            r = c["max"] / caps["voice_recv"]["max"]
            target, ok = f">= 3x voice-recv (is {r:.2f}x)", r >= 3.0
        if res.get("quick"):
            target, ok = (target + " [not judged: one point, not a search]") if target else "", None
        add("3 capacity", c["label"], f"{c['max']} speakers{lat}", target, ok)
        if at and "latency_p99_ms" in at and key.startswith("listening"):
            add(
                "3 latency",
                c["label"] + " at max",
                f"p99 {at['latency_p99_ms']:.1f} ms",
                f"<= {jitter_ms + 10:.0f} ms",
                at["latency_p99_ms"] <= jitter_ms + 10,
            )
    d = res.get("dave_scale")
    if d and "error" not in d:
        add(
            "3 capacity",
            f"DAVE on: {d['guilds']} guilds x {d['speakers_per_guild']} speakers, 2 workers",
            f"{'sustained' if d['bad_fraction'] <= 0.001 else 'NOT sustained'} ({100 * d['bad_fraction']:.2f}% bad), "
            f"{d['cpu_us_per_packet']:.1f} us/pkt, p50/p99 {d['latency_p50_ms']:.1f}/{d['latency_p99_ms']:.1f} ms",
        )

    comp = res.get("comparison", [])
    for r in comp:
        if "error" in r:
            add("4 voice-recv", f"{r.get('library')} {r.get('speakers')} speakers", "error")
            continue
        case = f"{r['library']:<10} {r['speakers']:>4} speakers decode={'on ' if r['decode'] else 'off'}"
        value = f"{r['cpu_us_per_packet']:.1f} us/pkt, {100 * r['bad_fraction']:.2f}% bad"
        target = ""
        if r["library"] == "voice_recv":
            ours = next(
                (
                    o
                    for o in comp
                    if o.get("library") == "listening"
                    and o.get("speakers") == r["speakers"]
                    and o.get("decode") == r["decode"]
                    and "error" not in o
                ),
                None,
            )
            if ours:
                target = f"ours {ours['cpu_us_per_packet'] / r['cpu_us_per_packet']:.2f}x its CPU"
        add("4 voice-recv", case, value, target)

    engine_rows(res, add)

    st = res.get("stream") or {}
    if "error" in st:
        add("7 stream", "AudioStream", "error")
    elif st:
        base = st["opus_decode_us"]
        for case in ("frames", "frames 16k", "utterances", "utterances 16k", "mixed", "mixed 16k"):
            label = case.replace(" 16k", ", as 16 kHz mono float32")
            add(
                "7 stream",
                f"AudioStream {label} ({st['speakers']} speakers)",
                f"{st[case]:.1f} us a frame = {st[case] / base:.2f}x the decode of it ({base:.1f} us)",
            )
    rd = res.get("redis") or {}
    if "error" in rd:
        add("8 redis", "RedisStreamSink", "error")
    elif rd:
        sp = rd["speakers"]
        add(
            "8 redis",
            f"publish, {sp} speakers (bot process: caller + publisher thread)",
            f"{rd['bot_us_per_frame']:.1f} us a frame (server {rd['server_us_per_frame']:.1f}), {rd['dropped']} dropped",
            "<= 10 us",
            rd["bot_us_per_frame"] <= 10.0,
        )
        add("8 redis", "StreamRecorder to WAV + mix (worker)", f"{rd['worker_us_per_frame']:.1f} us a frame")
        lv = rd.get("live") or {}
        if lv:
            add(
                "8 redis",
                f"live, {sp} speakers: bot on_audio -> worker wrote it",
                f"p50 {lv['p50_ms']:.1f} ms, p99 {lv['p99_ms']:.1f} ms (worker {lv['cpu_us_per_frame']:.0f} us a frame)",
            )
        for sc in rd.get("scale") or ():
            add(
                "8 redis",
                f"worker throughput, {sc['workers']} worker process(es), WAV + mix",
                f"{sc['realtime_speakers']:.0f} speakers in real time ({sc['cpu_us_per_frame']:.0f} us a frame)",
            )
    for name, sp in (res.get("speech") or {}).items():
        if not isinstance(sp, dict):
            continue
        if "error" in sp:
            add("9 speech", name, sp["error"])
            continue
        if "precision" in sp:  # voice commands
            p50, p95 = sp["cpu_per_utterance_ms_p50_p95"]
            add(
                "9 speech",
                f"{name}: precision, recall ({sp['commands']} commands, {sp['distractors']} distractors); CPU",
                f"{sp['precision']:.2f}, {sp['recall']:.2f}; {sp['cpu_per_second']:.3f} s a second of speech,"
                f" {p50}-{p95} ms an utterance (p50-p95); last sound -> command"
                f" {min(sp['latency_ms'] or [0])}-{max(sp['latency_ms'] or [0])} ms",
                ">= 0.95 each",
                sp["precision"] >= 0.95 and sp["recall"] >= 0.95,
            )
            continue
        waits = sp.get("latency_ms") or [0]
        wer = f", word error rate on the clips {sum(sp['wer']) / len(sp['wer']):.2f}" if "wer" in sp else ""
        add(
            "9 speech",
            f"{name}: CPU a second of speech, speakers a core; last sound -> line",
            f"{sp['cpu_per_second']:.3f} s, {sp['speakers_per_core']:.1f} speakers; {min(waits)}-{max(waits)} ms{wer}",
        )
    formats = res.get("formats") or {}
    if "error" in formats:
        add("10 formats", "file formats", formats["error"])
    for name, fm in formats.items():
        if isinstance(fm, dict):
            add(
                "10 formats",
                f"{name}: CPU a second of speech; kbit/s; CPU a second of silence",
                f"{1000 * fm['cpu_per_second']:.2f} ms; {fm['kbit_s']:.0f}; {1000 * fm['silence_cpu_per_second']:.3f} ms",
            )
    for name, v in (res.get("vad") or {}).items():
        if not isinstance(v, dict):
            continue
        if "error" in v:
            add("7 stream", f"VAD {name}", v["error"])
            continue
        noisy = min(x for k, x in v.items() if k.endswith("SNR: speech found"))
        false = max(x for k, x in v.items() if k.endswith("alone: called speech"))
        add(
            "7 stream",
            f"VAD {name}",
            f"{v['cpu_us_per_20ms']:.1f} us a frame; speech found {100 * v['clean: speech found']:.0f}% clean, "
            f">= {100 * noisy:.0f}% at 10 dB SNR; noise called speech <= {100 * false:.0f}%",
        )

    widths = [max(len(r[i]) for r in [*rows, ("section", "case", "result", "target", "met")]) for i in range(5)]
    head = ("section", "case", "result", "target", "met")
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            lines.append("")
        last = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    m = res.get("machine", {})
    header = (
        f"discord-ext-listening benchmarks: {m.get('nproc')} x {m.get('cpu', '?')}, Python {m.get('python')}, "
        f"load avg at start {fmt((m.get('loadavg') or [None])[0], '.2f')}; us = CPU microseconds per 20 ms "
        f"packet summed over all the bot's processes; 'bad' = lost or later than {late_ms:.0f} ms"
    )
    return header + "\n" + "\n".join(lines)


def engine_rows(res: dict[str, Any], add: Callable[..., None]) -> None:
    """The rows of the engine section (issue 12's targets; the per-packet ones are growth rows)."""
    eng = res.get("engine")
    if not eng:
        return
    quick = res.get("quick")
    idle = {r["connections"]: r for r in eng.get("idle", [])}
    for n, r in sorted(idle.items()):
        if "error" in r:
            add("6 engine", f"idle: {n} silent connections", "error")
            continue
        if n in IDLE_JUDGED_AT:
            per = r["added_ms_per_s_per_connection"]
            add(
                "6 engine",
                f"idle: listening adds, {n} silent connections",
                f"{per:.2f} ms CPU/s a connection ({r['added_ms_per_s']:.1f} ms/s in all)",
                f"<= {IDLE_MS_PER_CONNECTION} ms/s a connection",
                per <= IDLE_MS_PER_CONNECTION,
            )
    for n, r in sorted(idle.items()):
        if "error" not in r:
            add(
                "6 engine",
                f"idle curve: {n:>3} silent connection{'s' if n != 1 else ''} listening",
                f"{r['listening_cpu_ms_per_s']:.1f} ms CPU/s in all (not listening: {r['connected_cpu_ms_per_s']:.1f}; "
                f"{r['listening_threads']} threads, {r['listening_processes']} processes)",
            )

    caps = res.get("capacity", {})
    vr = eng.get("voice_recv") or caps.get("voice_recv")
    for key, c in (("g3", eng.get("g3")), ("g5", eng.get("g5") or caps.get("listening_50g_2w"))):
        if not c:
            continue
        at = c.get("at_max") or {}
        lat = f", p50/p99 {fmt(at.get('latency_p50_ms'))}/{fmt(at.get('latency_p99_ms'))} ms" if at else ""
        target, ok = f">= {MANY_GUILDS_VS_VOICE_RECV:.0f}x voice-recv's one guild", None
        if vr and vr.get("max"):
            ratio = c["max"] / vr["max"]
            target += f" (is {ratio:.2f}x; it: {vr['max']})"
            ok = ratio >= MANY_GUILDS_VS_VOICE_RECV
        else:
            target += " (voice-recv not measured)"
        if quick:
            target, ok = target + " [not judged: one point]", None
        label = c["label"] if key == "g3" else c["label"] + (" (the capacity row)" if "g5" not in eng else "")
        add("6 engine", label, f"{c['max']} speakers{lat}", target, ok)

    r = eng.get("spread")
    if r and "error" not in r:
        busy = sorted(r.get("children_us_per_packet", []), reverse=True)[:2]
        share = busy[1] / sum(busy) if len(busy) == 2 and sum(busy) > 0 else 0.0
        add(
            "6 engine",
            "one guild of 100 speakers, decode, 2 workers: CPU of the less busy worker",
            f"{100 * share:.0f}% of the two workers' ({' / '.join(f'{x:.1f}' for x in busy)} us/pkt), "
            f"{100 * r['bad_fraction']:.2f}% bad",
            f">= {100 * SPREAD_MIN_SHARE:.0f}% (both busy)",
            share >= SPREAD_MIN_SHARE,
        )
    elif r:
        add("6 engine", "one guild of 100 speakers, 2 workers", "error")

    r = eng.get("at_80")
    if r and "error" not in r:
        jitter = res.get("jitter_depth_s")
        case = f"{r['guilds']} guilds x {r['speakers_per_guild']} speakers (80% of capacity), 2 workers, {r['seconds']:.0f} s"
        held = f"{100 * r['bad_fraction']:.2f}% bad"
        if jitter is None:
            add(
                "6 engine",
                f"p99 arrival-to-sink, {case}",
                f"{r['latency_p99_ms']:.1f} ms, {held}",
                "jitter depth unknown",
            )
        else:
            limit = 1000 * jitter + LATENCY_MARGIN_MS
            add(
                "6 engine",
                f"p99 arrival-to-sink, {case}",
                f"{r['latency_p99_ms']:.1f} ms (p50 {r['latency_p50_ms']:.1f}), {held}",
                f"<= {limit:.0f} ms (jitter depth {1000 * jitter:.0f} + {LATENCY_MARGIN_MS:.0f})",
                r["latency_p99_ms"] <= limit,
            )
        # Memory: common.heap() of the whole tree (anonymous + shared memory, counted once),
        # less the counting sinks' own notes.
        small = eng.get("small") or {}
        if "error" not in small and small and r["speakers"] > small["speakers"]:
            per = [
                (
                    (x["heap_window_start_mb"] - x["heap_before_mb"] - x["sink_notes_window_start_mb"]) * 1024,
                    (x["heap_after_mb"] - x["heap_before_mb"] - x["sink_notes_after_mb"]) * 1024,
                )
                for x in (small, r)
            ]
            extra = r["speakers"] - small["speakers"]
            start, end = ((per[1][i] - per[0][i]) / extra for i in (0, 1))
            add(
                "6 engine",
                f"memory an active speaker ({r['speakers']} against {small['speakers']} speakers)",
                f"{start:.0f} KiB as the window opens, {end:.0f} KiB at its end",
                f"<= {MEMORY_KIB_PER_SPEAKER:.0f} KiB",
                max(start, end) <= MEMORY_KIB_PER_SPEAKER,
            )
        else:
            add("6 engine", "memory an active speaker", "error" if small else "not measured")
        growth = (r["heap_after_mb"] - r["heap_window_start_mb"]) - (
            r["sink_notes_after_mb"] - r["sink_notes_window_start_mb"]
        )
        add(
            "6 engine",
            f"memory growth over the window, {case}",
            f"{1024 * growth / max(1, r['speakers']):+.1f} KiB a speaker ({growth:+.2f} MiB; "
            f"RSS {r['rss_after_mb'] - r['rss_window_start_mb']:+.1f} MiB)",
            f"flat: <= +{MEMORY_GROWTH_KIB_PER_SPEAKER:.0f} KiB a speaker",
            1024 * growth / max(1, r["speakers"]) <= MEMORY_GROWTH_KIB_PER_SPEAKER,
        )
    elif r:
        add("6 engine", "80% of capacity, a long window", "error")


def main() -> int:
    p = argparse.ArgumentParser(description="Run the receive-path benchmarks and print one table.")
    p.add_argument("--quick", action="store_true", help="a ~2 minute smoke version (every section, one point each)")
    p.add_argument("--skip-voicerecv", action="store_true", help="do not set up or run discord-ext-voice-recv")
    p.add_argument("--refresh-voicerecv", action="store_true", help="re-run pip in its environment (upgrades it)")
    p.add_argument("--late-ms", type=float, default=200.0, help="a frame later than this counts against capacity")
    p.add_argument("--start", type=int, default=60, help="first guess for the one-guild capacity search")
    p.add_argument(
        "--only",
        default="",
        help="comma list of sections: floors,growth,comparison,capacity,dave,engine,stream,redis,speech,formats",
    )
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = p.parse_args()
    bench = Bench(args)
    t0 = time.monotonic()
    only = set(filter(None, args.only.split(",")))

    def want(section: str) -> bool:
        return not only or section in only

    if args.skip_voicerecv:
        bench.results["voice_recv_error"] = "skipped (--skip-voicerecv)"
    elif want("comparison") or want("capacity") or want("engine"):
        err = ensure_voicerecv_env(args.refresh_voicerecv)
        bench.results["voice_recv_error"] = err
        if err:
            log(f"discord-ext-voice-recv unavailable: {err}")
        else:
            bench.results["voice_recv_version"] = voicerecv_version()
    if want("floors"):
        bench.floors()
    if want("capacity"):
        bench.capacities()
    caps = bench.results.get("capacity", {})
    max_dec = caps.get("listening_1g_1w", {}).get("max") or 150
    max_pass = caps.get("listening_passthrough", {}).get("max") or 400
    if want("growth"):
        if args.quick:
            bench.growth([10], [100])
        else:
            bench.growth([1, 10, 100, max_dec], [1, 10, 100, max_pass])
    if want("comparison") and not bench.results.get("voice_recv_error"):
        bench.comparison()
    if want("dave"):
        bench.dave_at_scale()
    if want("engine"):
        bench.engine()
    if want("stream"):
        bench.stream()
    if want("redis"):
        bench.redis()
    if want("speech"):
        bench.speech()
    if want("formats"):
        bench.formats()
    bench.results["wall_s"] = time.monotonic() - t0
    bench.results["trials"] = bench.trials
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bench.results, indent=1))
    print(table(bench.results, args.late_ms))
    print(f"\n{len(bench.trials)} runs in {bench.results['wall_s']:.0f} s; every number in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
