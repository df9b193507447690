"""Benchmark: the list of record for N subscribers: CSV sync (first and unchanged), the read a send makes. Prints figures only.

Run: .venv/bin/python benchmarks/bench_subscribers.py [N]

The limit it is measured against, in the same run: reading the same CSV alone (parse and
validate every row), which is what a send cost before the list existed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from newsletter.storage import sqlite
from newsletter.subscribers import Tally, iter_recipients, read_csv, sync_csv


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main(count: int = 100_000) -> None:
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "subscribers.csv"
        rows = "".join(f"reader{i}@example.com,Reader {i},Europe/Paris\n" for i in range(count))
        csv.write_text("email,name,timezone\n" + rows, encoding="utf-8")
        conn = sqlite.connect(Path(folder) / "var")
        csv_only, _ = timed(lambda: sum(1 for _ in read_csv(csv, Tally())))
        first, _ = timed(lambda: sync_csv(csv, conn, Tally()))
        again, _ = timed(lambda: sync_csv(csv, conn, Tally()))
        merged, found = timed(lambda: sum(1 for _ in iter_recipients(csv, conn, Tally())))
        print(f"{count} subscribers (a loaded 2-core machine: compare the ratios, not the seconds)")
        print(f"read the CSV alone (the limit): {csv_only:.2f} s")
        print(f"first sync into the list: {first:.2f} s ({first / csv_only:.1f}x the CSV read)")
        print(f"sync of an unchanged file: {again * 1000:.1f} ms")
        print(
            f"read for a send (CSV merged with the list): {merged:.2f} s ({merged / csv_only:.1f}x the CSV read), {found} recipients"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
