#!/usr/bin/env python3
"""Mutation testing of the receive core: ``python3 dev.py mutants``.

Runs mutmut (configured in ``pyproject.toml`` under ``[tool.mutmut]``: which modules are mutated
and which tests judge them) in a copy of the working tree under ``.mutants/tree``, with its own
virtualenv under ``.mutants/venv``, so an interrupted run can never leave a mutant in a
developer's tree. The copy is kept between runs and only changed files are copied into it, so
mutmut's own cache re-checks only the functions that changed (or whose tests changed).

The run is bounded (``--minutes``, 60 by default); what it found is written to
``.mutants/report.md`` (every mutant that was not killed, with its diff, grouped by function) and
``.mutants/report.json`` (the counts). Survivors are then killed by a test or explained in
``docs/testing.md``.

Usage::

    python3 dev.py mutants [--minutes 60] [--children 2] [--fresh] [MUTANT_NAME_GLOB ...]

Not part of CI: a full run takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import venv
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"
TREE = WORK / "tree"
VENV = WORK / "venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed-stamp"
LOG = WORK / "run.log"
REPORT_MD = WORK / "report.md"
REPORT_JSON = WORK / "report.json"
SHIM = ROOT / "scripts" / "mutants_import.py"
# Files mutmut owns inside the copy: never overwritten or deleted by the sync.
KEEP = {"mutants", ".venv"}


def log(message: str) -> None:
    print(f"[mutants {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    # The package itself is not installed: mutmut's copy of src/ must be the only one importable.
    return [*project["dependencies"], *extras.get("test", []), *extras.get("mutation", [])]


def ensure_venv() -> None:
    requirements = _requirements()
    digest = hashlib.sha256(("\n".join(requirements) + SHIM.read_text("utf-8")).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PY.exists():
        log(f"creating the mutation virtualenv in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    log("installing the test dependencies and mutmut into it (wheels from PyPI)")
    subprocess.check_call(
        [str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
    )
    purelib = Path(
        subprocess.check_output(
            [str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    shutil.copy2(SHIM, purelib / "_listening_mutants_import.py")
    (purelib / "_listening_mutants_import.pth").write_text("import _listening_mutants_import\n")
    STAMP.write_text(digest)


def _tracked_files() -> list[str]:
    out = subprocess.check_output(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def sync_tree(fresh: bool) -> None:
    """Copy the working tree (committed or not) into TREE, touching only files that changed."""
    if fresh and TREE.exists():
        shutil.rmtree(TREE)
    TREE.mkdir(parents=True, exist_ok=True)
    wanted = set(_tracked_files())
    changed = 0
    for rel in sorted(wanted):
        src, dst = ROOT / rel, TREE / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        changed += 1
    removed = 0
    for path in sorted(TREE.rglob("*"), reverse=True):
        rel = path.relative_to(TREE)
        if rel.parts[0] in KEEP or not path.is_file():
            continue
        if rel.as_posix() not in wanted and "__pycache__" not in rel.parts:
            path.unlink()
            removed += 1
    log(f"working tree copied to {TREE} ({changed} files changed, {removed} removed)")


def run_mutmut(minutes: float, children: int, names: list[str]) -> bool:
    """Run ``mutmut run``; returns False when the time bound stopped it."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    # Tests that start their own Python (a bot child, an orphaned pool) must import the mutants too.
    env["PYTHONPATH"] = str(TREE / "mutants" / "src")
    cmd = [str(BIN / "mutmut"), "run", "--max-children", str(children), *names]
    what = f"{len(names)} named mutants" if names else "every mutant"
    log(f"running mutmut on {what} for at most {minutes:g} minutes (progress in {LOG})")
    with LOG.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=TREE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            log("time bound reached: stopping mutmut; the report covers the mutants checked so far")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return False
    if proc.returncode:
        sys.stderr.write(LOG.read_text("utf-8", "replace")[-4000:])
        sys.exit(f"mutmut run failed (exit code {proc.returncode}); see {LOG}")
    return True


def _mutmut(*args: str) -> str:
    # (a read while a run writes its results can fail once; the third failure is real)
    for attempt in range(3):
        done = subprocess.run([str(BIN / "mutmut"), *args], cwd=TREE, capture_output=True, text=True)
        if done.returncode == 0 or attempt == 2:
            break
        time.sleep(0.5)
    done.check_returncode()
    return done.stdout


def _function_of(name: str) -> str:
    # discord.ext.listening.timeline.xǁStreamClockǁposition__mutmut_12 -> timeline.StreamClock.position
    base = name.rsplit("__mutmut_", 1)[0].removeprefix("discord.ext.listening.")
    module, _, func = base.rpartition(".")
    return f"{module}.{func.removeprefix('x_').removeprefix('xǁ').replace('ǁ', '.')}"


def short_id(name: str) -> str:
    """``timeline.StreamClock.position:12``: how docs/testing.md names a mutant.

    mutmut numbers the mutants of a function in source order, so an id stays valid until the
    function changes, which is exactly when its explanation must be read again.
    """
    return f"{_function_of(name)}:{name.rsplit('__mutmut_', 1)[1]}"


EXPLAINED_IN = ROOT / "docs" / "testing.md"
_ID = re.compile(r"`([A-Za-z_][\w.]*:\d+(?:,\s*\d+)*)`")


def explained_ids() -> set[str]:
    """Mutant ids written in docs/testing.md as `func:1` or `func:1, 2, 7` (backticked)."""
    if not EXPLAINED_IN.exists():
        return set()
    out = set()
    for match in _ID.finditer(EXPLAINED_IN.read_text("utf-8")):
        func, _, numbers = match.group(1).partition(":")
        out.update(f"{func}:{n.strip()}" for n in numbers.split(","))
    return out


def _source_of(name: str) -> tuple[Path, list[str]]:
    """The module file a mutant lives in, and the qualified name of its function."""
    base = name.rsplit("__mutmut_", 1)[0]
    module, _, func = base.rpartition(".")
    path = TREE / "src" / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path, func.removeprefix("x_").removeprefix("xǁ").split("ǁ")


def _def_line(tree: ast.Module, qualname: list[str]) -> int | None:
    body: list[ast.stmt] = tree.body
    node: ast.stmt | None = None
    for part in qualname:
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node.lineno if node is not None else None


def _log_call_lines(tree: ast.Module) -> set[int]:
    """Every line of a ``_log.<level>(...)`` statement (arguments on later lines included)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and isinstance(node.value.func.value, ast.Name)
            and node.value.func.value.id == "_log"
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _changed_lines(diff: str) -> list[int] | None:
    """Lines (1 = the ``def`` line) the mutant removes or rewrites, from ``mutmut show``'s
    diff of the function; None when it only adds lines."""
    changed: list[int] = []
    old = 0
    for line in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", line)
        if hunk:
            old = int(hunk.group(1))
        elif line.startswith(("---", "+++")) or not old:
            continue
        elif line.startswith("-"):
            changed.append(old)
            old += 1
        elif line.startswith(" "):
            old += 1
    return changed or None


def only_in_log_calls(name: str, diff: str) -> bool:
    """Whether the mutant changes nothing but the arguments of logging calls: what is logged
    is not behaviour (docs/testing.md), so such a survivor is explained by rule."""
    changed = _changed_lines(diff)
    if changed is None:
        return False
    path, qualname = _source_of(name)
    try:
        tree = ast.parse(path.read_text("utf-8"))
    except (OSError, SyntaxError):
        return False
    start = _def_line(tree, qualname)
    if start is None:
        return False
    logged = _log_call_lines(tree)
    return all(start + k - 1 in logged for k in changed)


def write_report(complete: bool, elapsed: float) -> dict[str, object]:
    status: dict[str, str] = {}
    for line in _mutmut("results", "--all", "true").splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep:
            status[name] = state
    counts = Counter(status.values())
    # A mutant that makes the judges run past mutmut's time limit (an endless loop) is caught:
    # in CI the test would fail on its own timeout.
    caught = {"killed", "caught by type check", "timeout"}
    open_ = sorted(n for n, s in status.items() if s not in caught | {"not checked"})
    with ThreadPoolExecutor(max_workers=4) as pool:
        diffs = dict(zip(open_, pool.map(lambda n: _mutmut("show", n), open_)))
    explained = explained_ids()
    logged = {n for n in open_ if only_in_log_calls(n, diffs[n])}
    unexplained = [n for n in open_ if short_id(n) not in explained and n not in logged]
    # An explanation is stale once its mutant is killed or gone (one not re-checked yet is not).
    unsettled = {short_id(n) for n, state in status.items() if state == "not checked" or n in open_}
    stale = sorted(explained - unsettled)
    by_function: dict[str, list[str]] = defaultdict(list)
    for name in unexplained:
        by_function[_function_of(name)].append(name)
    checked = sum(v for k, v in counts.items() if k != "not checked")
    killed = sum(counts[state] for state in caught)
    summary: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "complete": complete,
        "minutes": round(elapsed / 60, 1),
        "mutants": len(status),
        "checked": checked,
        "killed": killed,
        "score": round(killed / max(1, checked - counts["no tests"]), 4),
        "by_status": dict(counts),
        "not_killed": len(open_),
        "explained": len(open_) - len(unexplained),
        "explained_as_log_only": len(logged),
        "unexplained": len(unexplained),
        "stale_explanations": stale,
        "unexplained_by_function": {f: len(v) for f, v in sorted(by_function.items())},
    }
    REPORT_JSON.write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Mutation report",
        "",
        f"{summary['date']}: {checked} of {len(status)} mutants checked in {summary['minutes']} min"
        + ("" if complete else " (stopped by the time bound)")
        + f"; {killed} killed, score {summary['score']:.1%} (mutants with no covering test excluded).",
        "",
        "| status | mutants |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in counts.most_common()),
        "",
        f"{len(open_)} not killed: {len(logged)} change only a logging call (explained by rule), "
        f"{len(open_) - len(unexplained) - len(logged)} explained in docs/testing.md by id, "
        f"{len(unexplained)} not. Every mutant below survived and is not explained yet: kill it with a "
        "test, or explain it in docs/testing.md by its id.",
        "",
    ]
    if stale:
        lines += ["Explained in docs/testing.md but no longer surviving (remove them there):", ""]
        lines += [f"- `{i}`" for i in stale] + [""]
    for func, names in sorted(by_function.items()):
        lines += [f"## {func} ({len(names)})", ""]
        for name in names:
            lines += [f"`{short_id(name)}`", "", "```diff", diffs[name].strip(), "```", ""]
    REPORT_MD.write_text("\n".join(lines))
    return summary


# The bugs that once passed the whole suite (issue "tests that would catch a 5 ms lag"): each
# must fail at least one end-to-end test. (file, text, planted text).
ESCAPED = {
    "arrivals stamped 5 ms late": (
        "session.py",
        "self.receiver.datagrams(batch, arrivals)",
        "self.receiver.datagrams(batch, [a + 0.005 for a in arrivals])",
    ),
    "spurt starts 5 ms (240 samples) late": (
        "timeline.py",
        "pos = self._anchor(timestamp, arr, now)",
        "pos = self._anchor(timestamp, arr, now) + 240",
    ),
    "FEC never used (PLC instead)": ("decoding.py", "if k == 1 and fec is not None:", "if False:"),
    "frames whose DAVE key is missing are not retried": (
        "dave.py",
        "if may_wait and any(tag in text for tag in RETRYABLE):",
        "if False:",
    ),
    "frames of an unmapped SSRC are not held": ("receive.py", "elif user_id is None and may_wait:", "elif False:"),
    "packets in flight in a dead worker not counted lost": (
        "pool/processes.py",
        "lost = slot.take_lost(inc)",
        "lost = {} if slot.take_lost(inc) else {}",
    ),
    "the first packet after a stall released before the burst behind it": (
        "reorder.py",
        "if not heap or now < self._hold_until:",
        "if not heap:",
    ),
    "Ogg Opus one sample off the other formats": (
        "files/oggopus.py",
        "pre_skip=0,",
        "pre_skip=1,",
    ),
}
END_TO_END = [
    "tests/test_alignment.py",
    "tests/test_end_to_end_holds.py",
    "tests/test_listen.py",
    "tests/test_recording.py",
    "tests/test_discord_behaviours.py",
]


def plant_escaped() -> int:
    """Plant each escaped bug in a copy of the tree and run the end-to-end tests against it."""
    plant = WORK / "plant"
    if plant.exists():
        shutil.rmtree(plant)
    for rel in _tracked_files():
        dst = plant / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    package = plant / "src" / "discord" / "ext" / "listening"
    env = dict(os.environ, PYTHONPATH=str(plant / "src"))

    def end_to_end() -> tuple[int, list[str]]:
        done = subprocess.run(
            [str(PY), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *END_TO_END],
            cwd=plant,
            env=env,
            capture_output=True,
            text=True,
        )
        failed = [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
        return done.returncode, failed

    # Unplanted first: a failure here is the machine or the tree, and would pass for a catch.
    code, failed = end_to_end()
    if code:
        sys.exit(f"the end-to-end tests fail without any planted bug ({failed or code}); fix that first")
    missed = []
    for bug, (rel, text, planted) in ESCAPED.items():
        path = package / rel
        original = path.read_text("utf-8")
        if original.count(text) != 1:
            sys.exit(f"{rel} no longer has exactly one {text!r}: update ESCAPED in scripts/mutants.py")
        path.write_text(original.replace(text, planted))
        started = time.monotonic()
        try:
            code, failed = end_to_end()
        finally:
            path.write_text(original)
        verdict = f"caught by {failed[0]}" if code == 1 and failed else f"NOT caught (exit {code})"
        if not failed:
            missed.append(bug)
        log(f"{bug}: {verdict} [{time.monotonic() - started:.0f} s]")
    shutil.rmtree(plant)
    log(f"{len(ESCAPED) - len(missed)} of {len(ESCAPED)} escaped bugs caught end to end")
    return 1 if missed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dev.py mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="stop mutmut after this long (default 60)")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results and start over")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run")
    parser.add_argument(
        "--escaped", action="store_true", help="plant the bugs that once escaped the suite, one at a time"
    )
    parser.add_argument("names", nargs="*", help="only these mutants (mutmut name globs)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.children < 1:
        parser.error("--minutes must be positive and --children at least 1")
    if sysconfig.get_platform().startswith("win"):
        parser.error("mutation runs need fork (Linux or macOS)")
    WORK.mkdir(exist_ok=True)
    ensure_venv()
    if args.escaped:
        return plant_escaped()
    started = time.monotonic()
    complete = True
    if not args.report_only:
        sync_tree(args.fresh)
        complete = run_mutmut(args.minutes, args.children, args.names)
    summary = write_report(complete, time.monotonic() - started)
    log(
        f"{summary['checked']} of {summary['mutants']} mutants checked, {summary['killed']} killed "
        f"(score {summary['score']:.1%}); {summary['not_killed']} not killed, "
        f"{summary['unexplained']} of them not explained in docs/testing.md"
    )
    log(f"report: {REPORT_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
