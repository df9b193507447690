"""Benchmark: delivery throughput and peak memory against Postfix's smtp-sink on 127.0.0.1.

Prints, for 10,000 and 100,000 synthetic subscribers: messages per second and peak memory of
`send_day` (CSV read, ledger, rendering once, personalizing, 4 SMTP connections), and, in the
same run, the machine's limit: plain smtplib sending one pre-built message over the same number
of connections, and our own transport (PIPELINING, dot-stuffed once) sending one pre-built
message, which shows what the CSV, the ledger and personalizing cost on top. Each
measurement runs in a fresh process so that peak memory is its own.

Needs `smtp-sink` (Debian: apt-get install postfix) and root (smtp-sink -u nobody).
Run: .venv/bin/python benchmarks/bench_delivery.py [SIZES...]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

CONNECTIONS = 4
DAY = date(2026, 6, 25)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    process = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{port}", "256"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


def sample_message() -> bytes:
    from newsletter.config import load_settings
    from newsletter.events import load_events
    from newsletter.render import SAMPLE, render_edition
    from newsletter.selection import select_edition

    settings = load_settings(None, env={"NEWSLETTER_SECRET": "bench"})
    return render_edition(select_edition(DAY, load_events(settings.paths.events)), settings).message_for(SAMPLE)


def transport(port: int, count: int) -> dict[str, float]:
    """Our own transport (pipelined, pre-stuffed) with one pre-built message: no CSV, ledger or personalizing."""
    from newsletter.mail.transport import transaction
    from newsletter.mail.wire import wire_data

    wire = wire_data(sample_message())
    share = count // CONNECTIONS

    def work() -> None:
        server = smtplib.SMTP("127.0.0.1", port)
        server.ehlo()
        for i in range(share):
            transaction(server, "history@example.org", f"reader{i}@example.com", wire)
        server.quit()

    return _threads(work, share)


def _threads(work, share: int) -> dict[str, float]:
    threads = [threading.Thread(target=work) for _ in range(CONNECTIONS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"rate": share * CONNECTIONS / elapsed, "seconds": elapsed}


def baseline(port: int, count: int) -> dict[str, float]:
    """Plain smtplib: one pre-built message, CONNECTIONS threads each with a reused connection."""
    message = sample_message()
    share = count // CONNECTIONS

    def work() -> None:
        server = smtplib.SMTP("127.0.0.1", port)
        for i in range(share):
            server.sendmail("history@example.org", [f"reader{i}@example.com"], message)
        server.quit()

    return _threads(work, share)


def ours(port: int, count: int) -> dict[str, float]:
    """The real thing: send_day with a CSV of `count` subscribers and a fresh ledger."""
    from newsletter.config import load_settings
    from newsletter.editions import send_day

    folder = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    csv = folder / "subscribers.csv"
    with csv.open("w", encoding="utf-8") as out:
        out.write("email,name,timezone\n")
        for i in range(count):
            out.write(f"reader{i}@example.com,Reader {i},\n")
    config = folder / "newsletter.toml"
    config.write_text(
        f'[paths]\nsubscribers = "{csv}"\nstate = "{folder / "var"}"\npublic = "{folder / "public"}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nconnections = {CONNECTIONS}\n'
    )
    settings = load_settings(config, env={"NEWSLETTER_SECRET": "bench"})
    started = time.perf_counter()
    result = send_day(settings, DAY)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder)
    assert result.delivered == count, result.summary()
    return {"rate": count / elapsed, "send_rate": result.rate, "seconds": elapsed}


def child(kind: str, port: int, count: int) -> None:
    figures = {"baseline": baseline, "transport": transport, "ours": ours}[kind](port, count)
    figures["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def measure(kind: str, port: int, count: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(port), str(count)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(sizes: list[int]) -> None:
    sink, port = start_sink()
    try:
        print(f"smtp-sink on 127.0.0.1:{port}, {CONNECTIONS} connections, {os.cpu_count()} cores")
        results = {}
        for count in sizes:
            limit = measure("baseline", port, count)
            wire = measure("transport", port, count)
            mine = measure("ours", port, count)
            results[count] = mine
            print(
                f"{count:>7} subscribers: plain smtplib {limit['rate']:7.0f} msg/s | newsletter send {mine['rate']:7.0f} msg/s "
                f"end to end ({mine['send_rate']:.0f} msg/s sending) = {mine['rate'] / limit['rate']:.0%} of the limit | "
                f"peak memory {mine['peak_mb']:.1f} MB (plain smtplib {limit['peak_mb']:.1f} MB)\n"
                f"{'':>21}our transport alone, one pre-built message: {wire['rate']:7.0f} msg/s "
                f"(newsletter send is {mine['rate'] / wire['rate']:.0%} of it)"
            )
        if len(results) > 1:
            small, large = results[min(results)], results[max(results)]
            print(
                f"peak memory {max(results)} vs {min(results)} subscribers: {large['peak_mb'] / small['peak_mb'] - 1:+.1%}"
            )
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main([int(a) for a in sys.argv[1:]] or [10_000, 100_000])
