"""Benchmark: the README's first command, `newsletter send --dry-run`, cold, on the bundled data.

Issue 12's target: under 0.5 s. Each measurement is a new process (the OS file cache warm),
run as the README runs it: no configuration, the bundled events and subscribers.example.csv,
today's date. Three cases:

- fresh clone: a new empty working folder each time (the README's first command; a dry
  run creates no state folder, so nothing is cached);
- first run of a day: an installed folder (``newsletter status`` made its state database)
  that ran before (its ``var/cache/`` holds compiled templates and premailer's parse of our
  stylesheet), with no inlined HTML of this edition yet: each entry is removed before a run;
- repeat: the same installed folder with the cache filled by one run, as the daily job's
  send after a dry run or a preview of the day.

Bytecode is written by one warm-up run first (``pip install .`` compiles it at install time;
an editable install with PYTHONDONTWRITEBYTECODE set would recompile our modules on every start).
Prints the median and the range of ROUNDS processes, the CPU time, and the target beside them.

Run: nice .venv/bin/python benchmarks/bench_quickstart.py [ROUNDS]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.5
COMMAND = [str(Path(sys.executable).with_name("newsletter")), "send", "--dry-run"]


def environment() -> dict[str, str]:
    """The caller's environment without our settings and with bytecode caching on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "NEWSLETTER_CONFIG": ""}


def run_once(folder: Path, *, uncached: bool = False) -> tuple[float, float]:
    """Run the dry run in ``folder`` (without its inlined HTML if ``uncached``); return its wall and CPU time."""
    if uncached:
        for entry in (folder / "var" / "cache" / "inline").glob("*.html"):
            entry.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(COMMAND, check=True, capture_output=True, cwd=folder, env=environment())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def report(name: str, runs: list[tuple[float, float]]) -> None:
    walls = sorted(wall for wall, _ in runs)
    median = statistics.median(walls)
    cpu = statistics.median(c for _, c in runs)
    verdict = "PASS" if median < TARGET else "MISS"
    print(
        f"{verdict}  {name:<38} median {median:.3f} s (range {walls[0]:.3f}-{walls[-1]:.3f}, CPU {cpu:.3f} s)"
        f"   target < {TARGET} s"
    )


def main(rounds: int) -> None:
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {rounds} fresh processes per case")
    with tempfile.TemporaryDirectory() as top:
        run_once(Path(tempfile.mkdtemp(dir=top)))  # writes the bytecode, as an install does
        fresh = [run_once(Path(tempfile.mkdtemp(dir=top))) for _ in range(rounds)]
        installed = Path(tempfile.mkdtemp(dir=top))
        subprocess.run([COMMAND[0], "status"], check=True, capture_output=True, cwd=installed, env=environment())
        first = [run_once(installed, uncached=True) for _ in range(rounds)]
        run_once(installed)
        repeat = [run_once(installed) for _ in range(rounds)]
    report("send --dry-run, fresh clone", fresh)
    report("send --dry-run, first run of a day", first)
    report("send --dry-run, repeat (cache hit)", repeat)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
