"""Benchmark: storage past one machine (issue 13), on SQLite and on PostgreSQL, each figure beside its target.

1. senders: `newsletter send --processes N` (until that option exists: N `newsletter send` started
   at once, which share the edition through their leases) for N = 1, 2, 4 against Postfix's smtp-sink, SMALL
   subscribers already on the list (the CSV synced beforehand), a fresh ledger each run: msg/s
   end to end (planning included) and CPU per message (the senders, smtp-sink, and for PostgreSQL the
   database server too). Target: 2 processes at least 1.6x the rate of 1 on a 2-core machine.
   Beside it, what the cores allow: all cores divided by the CPU a message of every process of the
   2-process run, and the same for the share of the cores the hypervisor left us (its steal time
   during that run, from /proc/stat), and how many cores the 1-process run kept busy already (its rate
   times its CPU a message: at that CPU a message no number of processes goes past the cores divided
   by that). The SMTP server and the database share the cores with the senders here, so a rate of
   1.6x needs the senders to cost at least 4x what the server and database cost a message.
2. million: LARGE (default 1,000,000) subscribers through the library, one sender: the first
   sync of the CSV into the list, planning the edition (send_day plans it in a thread while it
   sends: until the whole list is planned), and sending a SAMPLE meanwhile, then stopping (the
   full send is extrapolated from the sample's rate and says so); the rows not sent in the sample are then marked delivered so that the database holds a
   whole edition; database size before the edition, with it, after `prune`, and after the next
   edition's planning (target: no larger than with the first, the freed space reused). On
   PostgreSQL the deliveries table is vacuumed after the edition and twice after `prune`, as
   autovacuum would in the day between: B-tree pages freed by a prune are recycled by the VACUUM
   that deletes them only when no older transaction ran meanwhile, else by the next one.

PostgreSQL runs on a throwaway server (tests/pgserver.py: initdb and pg_ctl into a temporary
folder, 127.0.0.1, fsync off, as the tests run it). Needs `smtp-sink` (Debian: apt-get install
postfix) and root (smtp-sink -u nobody; the PostgreSQL server runs as the `postgres` user).

Run: nice .venv/bin/python benchmarks/bench_storage.py [SMALL [LARGE [SAMPLE]]] [senders] [million]
     [sqlite] [postgresql]   (default: both parts, both backends, 20,000, 1,000,000 and 50,000)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.pgserver, for the throwaway PostgreSQL server

from benchmarks.bench_engine import start_sink  # noqa: E402

DAY = date(2026, 6, 25)
CONNECTIONS = 4  # per sender process
BACKENDS = ("sqlite", "postgresql")
NEWSLETTER = Path(sys.executable).with_name("newsletter")


def line(name: str, figure: str, limit: str, ok: bool | None) -> None:
    mark = "INFO" if ok is None else "PASS" if ok else "MISS"
    print(f"{mark}  {name:<46} {figure:<46} {limit}", flush=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children that ended (a PostgreSQL server and its backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time since boot, in ticks: (all of it, the part stolen by the hypervisor)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), fields[7]  # user nice system idle iowait irq softirq steal


def has_processes_option() -> bool:  # else N `newsletter send` processes at once (they share the edition)
    """Whether `newsletter send --processes N` exists yet (issue 13, the senders' part)."""
    out = subprocess.run([str(NEWSLETTER), "send", "--help"], capture_output=True, text=True).stdout
    return "--processes" in out


def has_postgres_backend() -> bool:
    try:
        import newsletter.storage.postgres  # noqa: F401
    except ImportError:
        return False
    return True


# --- the database server -------------------------------------------------------------------


class Postgres:
    """A throwaway PostgreSQL server; each run gets a database copied from the template."""

    def __init__(self, server, tracked: bool) -> None:
        import psycopg

        self.server, self.tracked = server, tracked  # tracked: pg_stat_statements is loaded
        self.psycopg = psycopg
        with self.admin() as conn:
            folder = conn.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetchone()[0]
        self.pid = int(Path(folder, "postmaster.pid").read_text().split()[0])

    @contextlib.contextmanager
    def admin(self) -> Iterator[object]:
        conn = self.psycopg.connect(self.server.url("postgres"), autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def create(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.server.url(name)

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def reset_statements(self) -> None:
        """Forget the statement statistics (pg_stat_statements) gathered so far."""
        if not self.tracked:
            return
        with self.admin() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")

    def statements(self, database: str, count: int) -> str:
        """Where the server's statement time went in one database: calls and time per message, by statement."""
        if not self.tracked:
            return "not measured (no pg_stat_statements in this PostgreSQL)"
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname = %s ORDER BY s.total_exec_time DESC",
                (database,),
            ).fetchall()
        calls, total = sum(r[0] for r in rows), sum(r[1] for r in rows)
        top = ", ".join(
            f"{statement_name(query)} {ms * 1000 / count:.0f} us ({n / count:.2f} a message)"
            for n, ms, query in rows[:4]
        )
        return f"{calls / count:.2f} statements and {total * 1000 / count:.0f} us of statement time a message: {top}"


def statement_name(query: str) -> str:
    """A short name for a statement of the ledger: its verb and table (a claim: 'claim')."""
    words = query.split()
    if query.startswith("WITH picked"):
        return "claim"
    table = next((w for before, w in itertools.pairwise(words) if before.upper() in {"UPDATE", "INTO", "FROM"}), "")
    return f"{words[0].upper()} {table}".strip()


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    from tests.pgserver import find_bindir, running_server

    bindir = find_bindir()
    tracked = bindir is not None and (bindir.parent / "lib" / "pg_stat_statements.so").exists()
    settings = {"shared_preload_libraries": "pg_stat_statements"} if tracked else {}  # where the server's time goes
    with running_server(settings) as server:
        yield Postgres(server, tracked)


# --- settings --------------------------------------------------------------------------------


def write_csv(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,timezone\n")
        for i in range(count):
            out.write(f"reader{i}@example.com,Reader {i},\n")
    return path


def write_config(folder: Path, csv: Path, port: int, url: str = "") -> Path:
    config = folder / "newsletter.toml"
    config.write_text(
        f'[paths]\nsubscribers = "{csv}"\nstate = "{folder / "var"}"\npublic = "{folder / "public"}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nconnections = {CONNECTIONS}\n'
        f'[database]\nurl = "{url}"\n',
        encoding="utf-8",
    )
    return config


def newsletter(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(config, *args), capture_output=True, text=True, env=ENV, check=False)


def command(config: Path, *args: str) -> list[str]:
    return [str(NEWSLETTER), "--config", str(config), *args]


# The senders as installed: with their bytecode cached (a shell that sets PYTHONDONTWRITEBYTECODE would have
# every spawned sender process compile the package from source first, about 0.4 s of CPU each).
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "NEWSLETTER_SECRET": "bench-" * 8,
    "PYTHONWARNINGS": "ignore",
}


def send(config: Path, processes: int, multi: bool) -> None:
    """`send --processes N`, or (before that option exists) N `newsletter send` started at once, which share the edition."""
    args = ["send", "--date", DAY.isoformat()]
    runs = [command(config, *args, "--processes", str(processes))] if multi else [command(config, *args)] * processes
    started = [
        subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for run in runs
    ]
    for process in started:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{' '.join(process.args[-4:])} failed: {err.strip()[-400:]}")


# --- 1. senders ------------------------------------------------------------------------------


def senders(backend: str, count: int, pg: Postgres | None, port: int, sink: int) -> None:
    """1, 2 and 4 sender processes on one edition, each run on a fresh ledger over the same synced list (``sink``: smtp-sink's pid)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-storage-{backend}-"))
    csv = write_csv(work / "subscribers.csv", count)
    template = work / "template"
    template.mkdir()
    url = pg.create("bench_template") if pg else ""
    config = write_config(template, csv, port, url)
    synced = newsletter(config, "status")  # syncs the CSV into the list: the runs below plan and send only
    if synced.returncode:
        raise SystemExit(f"status failed: {synced.stderr.strip()}")
    multi = has_processes_option()
    how = "send --processes N" if multi else "N `newsletter send` at once"
    figures: dict[int, dict[str, float]] = {}
    for processes in (1, 2, 4):
        run = work / f"run{processes}"
        shutil.copytree(template, run)
        run_url = pg.create(f"bench_run{processes}", "bench_template") if pg else ""
        run_config = write_config(run, csv, port, run_url)
        if pg:
            pg.reset_statements()
        cpu0, server0, sink0, ticks0 = children_cpu(), pg.cpu() if pg else 0.0, process_cpu(sink), cpu_ticks()
        started = time.perf_counter()
        send(run_config, processes, multi)
        elapsed = time.perf_counter() - started
        ticks1 = cpu_ticks()
        figures[processes] = {
            "rate": count / elapsed,
            "cpu_us": (children_cpu() - cpu0) / count * 1e6,
            "server_us": ((pg.cpu() - server0) if pg else 0.0) / count * 1e6,
            "sink_us": (process_cpu(sink) - sink0) / count * 1e6,
            "stolen": (ticks1[1] - ticks0[1]) / max(1, ticks1[0] - ticks0[0]),  # the share the hypervisor kept
        }
        server = f" + database server {figures[processes]['server_us']:.0f} us" if pg else ""
        print(
            f"      {backend}, {processes} process{'es' if processes > 1 else ''}: {figures[processes]['rate']:.0f} msg/s,"
            f" CPU per message: senders {figures[processes]['cpu_us']:.0f} us{server}"
            f" + smtp-sink {figures[processes]['sink_us']:.0f} us",
            flush=True,
        )
        if pg:
            print(f"        database server: {pg.statements(f'bench_run{processes}', count)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    one = figures[1]["rate"]
    print(f"      ({how}; each run plans, then sends; the list was synced beforehand)")
    wire = ceiling(count, port)
    line(
        f"{backend}: the wire's limit for 2 processes",
        f"2 raw senders {wire[2]:.0f} msg/s = {wire[2] / one:.2f}x of our 1 process",
        "if < 1.6x, the 2-process target is beyond this machine",
        None,
    )
    two = figures[2]
    spent = spent_us(two)
    cores = os.cpu_count() or 1
    ceiling_rate = cores * 1e6 / spent
    line(
        f"{backend}: what {cores} cores allow at that CPU a message",
        f"{ceiling_rate:.0f} msg/s = {ceiling_rate / one:.2f}x of 1 process",
        f"{spent:.0f} us a message in the 2-process run; 2 processes reached {two['rate'] / ceiling_rate:.0%} of it; "
        "if < 1.6x, the target is beyond this machine",
        None,
    )
    kept = cores * (1 - two["stolen"])
    line(
        f"{backend}: ... of which the hypervisor left us",
        f"{kept:.2f} cores ({two['stolen']:.0%} stolen): {kept * 1e6 / spent:.0f} msg/s = {kept * 1e6 / spent / one:.2f}x",
        f"2 processes reached {two['rate'] / (kept * 1e6 / spent):.0%} of it (/proc/stat's steal during the run)",
        None,
    )
    busy = one * spent_us(figures[1]) / 1e6  # cores the 1-process run kept busy
    line(
        f"{backend}: cores the 1-process run kept busy",
        f"{busy:.2f} of {cores}: at most {cores / busy:.2f}x for any number of processes",
        "at the CPU a message of 1 process; if < 1.6x, the target is beyond this machine",
        None,
    )
    for processes in (2, 4):
        ratio = figures[processes]["rate"] / one
        target = 1.6 if processes == 2 else None
        line(
            f"{backend}: {processes} sender processes, {count} to smtp-sink",
            f"{figures[processes]['rate']:.0f} msg/s = {ratio:.2f}x of 1 process",
            f"1 process {one:.0f} msg/s; " + ("target >= 1.6x" if target else "no target (2 cores)"),
            ratio >= target if target else None,
        )


def spent_us(figure: dict[str, float]) -> float:
    """The CPU a message of every process of a run: the senders, the database server and smtp-sink."""
    return figure["cpu_us"] + figure["server_us"] + figure["sink_us"]


def ceiling(count: int, port: int) -> dict[int, float]:
    """The wire's limit on this machine: 1 and 2 processes of bench_engine's raw pipelined sender (4 connections each).

    Two raw senders at once show what the sink and the two cores allow for 8 connections: if
    they reach less than 1.6x of one of our senders, the 2-process target is beyond the wire here.
    """
    script = Path(__file__).with_name("bench_engine.py")
    rates: dict[int, float] = {}
    for processes in (1, 2):
        share = count // processes
        started = time.perf_counter()
        children = [
            subprocess.Popen(
                [sys.executable, str(script), "--child", "raw", str(port), str(share), "plain"],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )  # fmt: skip
            for _ in range(processes)
        ]
        for proc in children:
            proc.communicate()
        rates[processes] = share * processes / (time.perf_counter() - started)
        print(f"      raw pipelined sender, {processes} process{'es' if processes > 1 else ''} x 4 connections: "
              f"{rates[processes]:.0f} msg/s (one pre-built message: the wire's limit)", flush=True)  # fmt: skip
    return rates


# --- 2. a million subscribers ----------------------------------------------------------------


def million_child(config: str, count: int, sample: int) -> None:
    """In its own process: sync, plan, send a sample, fill the edition, prune, plan the next one."""
    from newsletter import retention, storage
    from newsletter.config import load_settings
    from newsletter.editions import edition_for, send_day
    from newsletter.ledger import DatabaseLedger
    from newsletter.render import render_edition
    from newsletter.subscribers import Tally, iter_recipients, sync_csv

    settings = load_settings(Path(config), env={"NEWSLETTER_SECRET": "bench-" * 8})
    db = storage.connect(settings)
    figures: dict[str, float] = {"empty": size(db, settings)}
    started = time.perf_counter()
    sync_csv(settings.paths.subscribers, db, Tally())
    figures["sync_s"] = time.perf_counter() - started
    figures["listed"] = size(db, settings)

    stop = threading.Event()
    marks: dict[str, float] = {}

    class Sample:  # send_day's progress: sending starts while the list is planned (in a thread)
        sent = 0

        def start(self, total: int) -> None:
            marks["planned"] = time.perf_counter()  # its last call: the whole list is planned

        def update(self, count: int) -> None:
            marks.setdefault("first", time.perf_counter())
            self.sent += count
            if self.sent >= sample and "stopped" not in marks:
                marks["stopped"], figures["sent"] = time.perf_counter(), self.sent
                stop.set()

        def close(self) -> None:
            marks.setdefault("stopped", time.perf_counter())
            figures.setdefault("sent", self.sent)

    started = time.perf_counter()
    send_day(settings, DAY, stop=stop, progress=Sample())
    figures["plan_s"] = marks["planned"] - started
    figures["first_s"] = marks["first"] - started
    figures["send_rate"] = figures["sent"] / (marks["stopped"] - marks["first"])

    reply = db.execute("SELECT last_reply FROM deliveries WHERE status = 'delivered' LIMIT 1").fetchone()[0]
    db.execute(  # the rest of the edition as if sent: a whole edition's rows, for the sizes below
        "UPDATE deliveries SET status = 'delivered', attempts = 1, last_reply = ? WHERE day = ? AND status = 'pending'",
        (reply, DAY.isoformat()),
    )
    figures["edition_raw"] = size(db, settings)
    if db.backend == "postgresql":
        db.execute("VACUUM deliveries")  # the updates' old row versions, as autovacuum clears them
    figures["edition"] = size(db, settings)
    figures.update(split(db, "edition"))

    started = time.perf_counter()
    pruned = retention.prune(db, DAY + timedelta(days=settings.database.keep_days + 1), settings.database.keep_days)
    figures["prune_s"] = time.perf_counter() - started
    figures["folded"] = sum(f.recipients for f in pruned.folded)
    if db.backend == "postgresql":
        db.execute("VACUUM deliveries")  # what autovacuum does soon after: the dead rows' space is reusable
        # ... and on its next visit: the B-tree pages one VACUUM deletes reach the free space map at its end
        # only if no older transaction ran meanwhile, else at the next VACUUM. With one VACUUM, a run of this
        # benchmark found the index's freed pages unused: the next edition's entries took new ones (+333 MB).
        db.execute("VACUUM deliveries")
    figures["pruned"] = size(db, settings)
    figures["free"] = free_space(db)
    figures.update(split(db, "pruned"))

    later = DAY + timedelta(days=1)
    rendered = render_edition(edition_for(later, settings, db), settings)
    started = time.perf_counter()
    planned = DatabaseLedger(db).plan(
        later, iter_recipients(settings.paths.subscribers, db, Tally()), rendered.message_id_for
    )
    figures["plan2_s"] = time.perf_counter() - started
    figures["planned2"] = planned
    figures["next"] = size(db, settings)
    figures.update(split(db, "next"))
    db.close()
    print(json.dumps(figures))


def size(db, settings) -> float:
    """The database's size on disk in bytes (SQLite: the file and its WAL)."""
    if db.backend == "postgresql":
        return float(db.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    from newsletter.storage import sqlite

    path = sqlite.db_path(settings.paths.state)
    wal = path.with_name(path.name + "-wal")
    return float(path.stat().st_size + (wal.stat().st_size if wal.exists() else 0))


def split(db, when: str) -> dict[str, float]:
    """PostgreSQL: the deliveries table's own size and its indexes' (they reuse freed space differently)."""
    if db.backend != "postgresql":
        return {}
    table, indexes = db.execute("SELECT pg_relation_size('deliveries'), pg_indexes_size('deliveries')").fetchone()
    return {f"{when}_table": float(table), f"{when}_indexes": float(indexes)}


def free_space(db) -> float:
    """Space inside the database that new rows reuse (SQLite: free pages; PostgreSQL: not counted here)."""
    if db.backend == "postgresql":
        return 0.0
    pages = db.execute("PRAGMA freelist_count").fetchone()[0]
    return float(pages * db.execute("PRAGMA page_size").fetchone()[0])


def million(backend: str, count: int, sample: int, pg: Postgres | None, port: int) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"bench-million-{backend}-"))
    csv = write_csv(work / "subscribers.csv", count)
    config = write_config(work, csv, port, pg.create("bench_million") if pg else "")
    cpu0 = children_cpu()
    output = subprocess.run(
        [sys.executable, __file__, "--million", str(config), str(count), str(sample)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    if output.returncode:
        raise SystemExit(f"{backend} million failed: {output.stderr.strip()[-600:]}")
    f = json.loads(output.stdout.strip().splitlines()[-1])
    mb = 1024 * 1024
    full = count / f["send_rate"]
    print(
        f"      {backend}, {count} subscribers: first sync of the CSV into the list {f['sync_s']:.0f} s; "
        f"child CPU {children_cpu() - cpu0:.0f} s",
        flush=True,
    )
    print(f"      the first message {f['first_s']:.1f} s after the start; the sample was sent while the list was "
          "planned (in a thread of the same process)", flush=True)  # fmt: skip
    line(f"{backend}: planning {count}", f"{f['plan_s']:.0f} s ({count / f['plan_s']:.0f} rows/s)",
         f"sending them: {full:.0f} s (extrapolated); target <= 0.25 of it", f["plan_s"] <= 0.25 * full)  # fmt: skip
    line(f"{backend}: sending {count} (a SAMPLE, extrapolated)",
         f"{f['sent']:.0f} sent at {f['send_rate']:.0f} msg/s -> {full:.0f} s",
         "issue 13's measurement before: 675 s on one core", None)  # fmt: skip
    per_row = (f["edition"] - f["listed"]) / count
    vacuumed = f" ({f['edition_raw'] / mb:.0f} MB before VACUUM)" if f["edition_raw"] != f["edition"] else ""
    free = f" ({f['free'] / mb:.0f} MB of it free pages)" if f["free"] else " (after VACUUM)"
    print(
        f"      {backend} database: empty {f['empty'] / mb:.0f} MB, with the list {f['listed'] / mb:.0f} MB, with one "
        f"edition {f['edition'] / mb:.0f} MB{vacuumed}, {per_row:.0f} bytes a recipient row; after prune "
        f"{f['pruned'] / mb:.0f} MB{free}; after the next edition's planning {f['next'] / mb:.0f} MB",
        flush=True,
    )
    if "edition_table" in f:
        print(
            "      deliveries table / its indexes: with the edition "
            + ", after prune ".join(
                f"{f[f'{w}_table'] / mb:.0f} / {f[f'{w}_indexes'] / mb:.0f} MB" for w in ("edition", "pruned")
            )
            + f", after the next edition {f['next_table'] / mb:.0f} / {f['next_indexes'] / mb:.0f} MB",
            flush=True,
        )
    line(f"{backend}: prune one edition of {count}", f"{f['prune_s']:.0f} s, {f['folded']:.0f} rows folded",
         f"target: all {count} rows folded", f["folded"] == count)  # fmt: skip
    growth, first = f["next"] - f["pruned"], f["edition"] - f["listed"]
    line(f"{backend}: the database with the next edition", f"{f['next'] / mb:.0f} MB (+{growth / mb:.0f} MB after prune)",
         f"with the first {f['edition'] / mb:.0f} MB (it added {first / mb:.0f} MB); target <= 1.05x: bounded",
         f["next"] <= 1.05 * f["edition"])  # fmt: skip
    print(f"      planning the next edition ({f['planned2']:.0f} rows): {f['plan2_s']:.0f} s", flush=True)


# --- the parent ------------------------------------------------------------------------------


def main(small: int, large: int, sample: int, parts: set[str], backends: list[str]) -> None:
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} cores, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (a shared machine: compare "
        "the ratios, each measured within this run); send --processes: "
        f"{'yes' if has_processes_option() else 'not on main yet'}; "
        f"PostgreSQL backend: {'yes' if has_postgres_backend() else 'not on main yet'}",
        flush=True,
    )
    sink, port = start_sink()
    try:
        for backend in backends:
            if backend == "postgresql" and not has_postgres_backend():
                line("postgresql", "not measured: the PostgreSQL backend is not on main yet", "", False)
                continue
            with postgres_server() if backend == "postgresql" else contextlib.nullcontext() as pg:
                if "senders" in parts:
                    senders(backend, small, pg, port, sink.pid)
                if "million" in parts:
                    million(backend, large, sample, pg, port)
    finally:
        sink.terminate()
        sink.wait()
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--million":
        million_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        numbers = [int(a.replace("_", "")) for a in sys.argv[1:] if a.replace("_", "").isdigit()]
        small, large, sample = (numbers + [20_000, 1_000_000, 50_000][len(numbers) :])[:3]
        words = {a for a in sys.argv[1:] if not a.replace("_", "").isdigit()}
        parts = (words & {"senders", "million"}) or {"senders", "million"}
        backends = [b for b in BACKENDS if b in words] or list(BACKENDS)
        main(small, large, sample, parts, backends)
