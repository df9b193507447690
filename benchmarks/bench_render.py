"""Benchmark: render one edition, then personalize it for 10,000 subscribers. Prints figures only.

Run: .venv/bin/python benchmarks/bench_render.py [N]
"""

from __future__ import annotations

import sys
import time
from datetime import date

from newsletter.config import load_settings
from newsletter.events import load_events
from newsletter.render import render_edition
from newsletter.selection import select_edition
from newsletter.subscribers import Subscriber


def main(count: int = 10_000) -> None:
    settings = load_settings(None, env={"NEWSLETTER_SECRET": "benchmark-secret"})
    edition = select_edition(date(2026, 6, 25), load_events(settings.paths.events))
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        rendered = render_edition(edition, settings)
    per_edition = (time.perf_counter() - start) / rounds
    subscribers = [Subscriber(f"reader{i}@example.com", f"Reader Nº{i}") for i in range(count)]
    start = time.perf_counter()
    total = 0
    for subscriber in subscribers:
        total += len(rendered.message_for(subscriber))
    elapsed = time.perf_counter() - start
    print(f"render once (templates + premailer + MIME): {per_edition * 1000:.1f} ms per edition")
    print(f"personalize {count} subscribers: {elapsed:.3f} s, {elapsed / count * 1e6:.1f} us per subscriber")
    print(f"average message size: {total / count / 1024:.1f} KB; HTML {rendered.html_size / 1024:.1f} KB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
