"""Many senders sharing one edition: leases in the ledger, no edition lock, the same exactly-once promise.

Senders are threads of one run, `newsletter send` processes, and daemons; each claims
batches of due rows with a lease, renews it while it works, and clears it with the outcome.
The server on 127.0.0.1 counts messages per recipient: everyone once, and after a crash
at most the dead sender's connections twice.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from newsletter import senders, storage
from newsletter.editions import send_day
from newsletter.ledger import DatabaseLedger
from newsletter.sending.throttle import Throttle
from newsletter.storage import sqlite
from newsletter.subscribers import Subscriber
from tests import test_delivery
from tests.conftest import RecordingHandler, free_port
from tests.test_delivery import DAY, ledger_rows, settled_count

make_sender = test_delivery.make_sender  # the fixture: settings that send to a given server

READERS = [f"reader{i}@example.com" for i in range(200)]


def planned_ledger(settings, count: int) -> DatabaseLedger:
    """A ledger with ``count`` pending rows of DAY."""
    ledger = DatabaseLedger(storage.connect(settings))
    ledger.plan(DAY, (Subscriber(f"reader{i}@example.com") for i in range(count)), lambda s: f"<{s.key}>")
    return ledger


def claimed(ledger, owner, now, after="", limit=10):
    return [due.subscriber.key for due in ledger.claim(DAY, owner, now=now, until=now + 60, limit=limit, after=after)]


# The ledger's leases.


def test_two_senders_claim_disjoint_batches_and_a_live_lease_is_never_taken(smtp_server, make_sender):
    ledger = planned_ledger(make_sender(smtp_server), 30)
    first = claimed(ledger, "a", 1000.0, limit=10)
    second = claimed(ledger, "b", 1000.0, limit=10)
    assert len(first) == len(second) == 10 and not set(first) & set(second)
    assert claimed(ledger, "c", 1059.0, after=None) == [], "no lease has run out: nothing to take over"
    assert ledger.holders(DAY, "c", 1059.0) == ["a", "b"]


def test_an_expired_lease_returns_the_rows_to_the_pool_and_a_renewed_one_does_not(smtp_server, make_sender):
    ledger = planned_ledger(make_sender(smtp_server), 20)
    mine = claimed(ledger, "a", 1000.0, limit=5)
    kept = claimed(ledger, "b", 1000.0, limit=5)
    ledger.renew(DAY, "b", 1200.0)  # b's heartbeat; a stopped beating (it died)
    assert sorted(claimed(ledger, "c", 1100.0, after=None)) == sorted(mine)
    assert claimed(ledger, "d", 1100.0, after=None) == []
    assert set(kept).isdisjoint(claimed(ledger, "d", 1100.0, limit=20))


def test_an_outcome_clears_the_lease_and_a_retry_keeps_it(smtp_server, make_sender):
    ledger = planned_ledger(make_sender(smtp_server), 3)
    rows = claimed(ledger, "a", 1000.0)
    ledger.mark_delivered_many(DAY, [(rows[0], "250 ok")])
    ledger.mark_retry(DAY, rows[1], "451 later")
    ledger.mark_failed(DAY, rows[2], "451 still later")
    leases = dict(((email, (owner, status)) for email, owner, status in ledger.conn.execute(
        "SELECT email, lease_owner, status FROM deliveries"
    )))  # fmt: skip
    assert leases == {rows[0]: ("", "delivered"), rows[1]: ("a", "pending"), rows[2]: ("", "failed")}


# Sends of one edition at once.


def test_a_row_held_by_a_sender_on_another_machine_is_sent_once_its_lease_runs_out(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=6)
    ledger = planned_ledger(settings, 6)
    taken = claimed(ledger, "elsewhere/1:4242:dead", time.time() - 58, limit=2)  # its lease ends in 2 s
    result = send_day(settings, DAY)
    assert result.delivered == 6 and result.complete
    assert Counter(smtp_server.handler.recipients()) == Counter({f"reader{i}@example.com": 1 for i in range(6)})
    assert all(ledger_rows(settings)[email]["status"] == "delivered" for email in taken)


def start_send(tmp_path, *args: str) -> subprocess.Popen:
    """A `newsletter send` process on the test's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = "s"
    command = [sys.executable, "-m", "newsletter", "--config", str(tmp_path / "newsletter.toml"), "send", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_send_processes_on_one_sqlite_state_deliver_everyone_exactly_once(smtp_server, make_sender, tmp_path):
    smtp_server.handler.delay = 0.002
    make_sender(smtp_server, count=len(READERS), smtp="connections = 2\n")
    senders = [start_send(tmp_path, "--date", DAY.isoformat()) for _ in range(2)]
    outputs = [sender.communicate(timeout=120) for sender in senders]
    assert [sender.returncode for sender in senders] == [0, 0], outputs
    assert Counter(smtp_server.handler.recipients()) == Counter(dict.fromkeys(READERS, 1))
    delivered = [int(out.split("delivered ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(delivered) == len(READERS), outputs
    assert "another send" not in "".join(err for _, err in outputs)


def test_send_processes_2_plans_once_sends_from_two_processes_and_prints_one_summary(
    smtp_server, make_sender, tmp_path
):
    smtp_server.handler.delay = 0.002
    make_sender(smtp_server, count=len(READERS), smtp="connections = 2\n", extra="bad-address,Nobody,\n")
    sender = start_send(tmp_path, "--date", DAY.isoformat(), "--processes", "2")
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert Counter(smtp_server.handler.recipients()) == Counter(dict.fromkeys(READERS, 1))
    assert out.count("\n") == 1 and out.startswith(
        f"{DAY.isoformat()}: delivered {len(READERS)}, bounced 0, failed 0, skipped 1 (1 invalid"
    )
    owners = {row["lease_owner"] for row in ledger_rows_of(tmp_path)}
    assert owners == {""}, "every outcome cleared its lease"


def test_send_processes_send_while_the_edition_is_planned_and_wait_for_its_end(
    smtp_server, make_sender, tmp_path, monkeypatch
):
    settings = make_sender(smtp_server, count=10, smtp="connections = 2\n")
    plan = senders.plan_day

    def planned_in_two_halves(settings, day, **options):
        first = plan(settings, day, **options)
        deadline = time.monotonic() + 60
        while not smtp_server.handler.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert smtp_server.handler.messages, "nothing was sent while the edition was being planned"
        with settings.paths.subscribers.open("a", encoding="utf-8") as csv:
            csv.writelines(f"reader{i}@example.com,Reader {i},\n" for i in range(10, 20))
        first.planned += plan(settings, day, **options).planned
        return first

    monkeypatch.setattr(senders, "plan_day", planned_in_two_halves)
    result = senders.send_with_processes(settings, DAY, 2)
    assert result.delivered == 20, result.summary()
    assert Counter(smtp_server.handler.recipients()) == Counter(f"reader{i}@example.com" for i in range(20))


def test_send_processes_render_the_edition_once_and_the_senders_read_it_from_the_cache(
    smtp_server, make_sender, monkeypatch, caplog, capfd
):
    settings = make_sender(smtp_server, count=6, smtp="connections = 2\n")
    plan = senders.plan_day

    def slow_to_start(settings, day, **options):
        time.sleep(1.5)  # the senders have started and imported long before the edition is rendered
        return plan(settings, day, **options)

    monkeypatch.setattr(senders, "plan_day", slow_to_start)
    monkeypatch.setattr(logging.getLogger("newsletter"), "level", logging.DEBUG)  # the senders log at DEBUG too
    with caplog.at_level(logging.DEBUG, logger="newsletter"):
        result = senders.send_with_processes(settings, DAY, 2)
    assert result.delivered == 6
    inlined = "inlining the CSS with premailer"
    assert caplog.text.count(inlined) == 1, "the parent renders the edition"
    assert inlined not in capfd.readouterr().err, "no sender process ran premailer: they waited for the cache"


def ledger_rows_of(tmp_path):
    with sqlite.connect(tmp_path / "var") as db:
        return db.execute("SELECT * FROM deliveries").fetchall()


def test_send_processes_exits_3_with_one_line_when_the_relay_is_down(make_sender, tmp_path):
    class Nowhere:
        port = free_port()

    make_sender(Nowhere, count=100, smtp="connections = 2\n")  # both processes hold rows: they give up together
    sender = start_send(tmp_path, "--date", DAY.isoformat(), "--processes", "2")
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 3, err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error: cannot connect to 127.0.0.1"), err
    assert {row["status"] for row in ledger_rows_of(tmp_path)} == {"pending"}


# The send budget: smtp.rate_limit and smtp.max_per_hour across senders.


def test_two_senders_reserve_slots_from_one_budget(tmp_path):
    now = [1000.0]
    first, second = (
        Throttle(sqlite.connect(tmp_path / "var"), "relay:587/me", 10, 0, clock=lambda: now[0]) for _ in range(2)
    )
    slots = sorted(throttle.reserve() for _ in range(10) for throttle in (first, second))
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(slots, slots[1:], strict=False)), slots
    assert slots[0] == 1000.0 and slots[-1] >= 1001.9 - 1e-9


def test_the_hourly_cap_holds_across_senders(tmp_path):
    now = [1000.0]
    first, second = (Throttle(sqlite.connect(tmp_path / "var"), "relay", 0, 3, clock=lambda: now[0]) for _ in range(2))
    slots = [first.reserve(), second.reserve(), first.reserve(), second.reserve()]
    assert slots[:3] == [1000.0] * 3 and slots[3] == 1000.0 + 3600


@dataclass
class TimedHandler(RecordingHandler):
    """A recording handler that also keeps when each message was accepted."""

    times: list[float] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.times.append(time.monotonic())
        return reply


def test_the_rate_limit_holds_across_two_send_processes(make_sender, tmp_path):
    handler = TimedHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:

        class Server:
            port = controller.port

        rate, readers = 10, 40
        make_sender(Server, count=readers, smtp=f"connections = 2\nrate_limit = {rate}\n")
        senders = [start_send(tmp_path, "--date", DAY.isoformat()) for _ in range(2)]
        outputs = [sender.communicate(timeout=120) for sender in senders]
        assert [sender.returncode for sender in senders] == [0, 0], outputs
    finally:
        controller.stop()
    assert Counter(handler.recipients()) == Counter({f"reader{i}@example.com": 1 for i in range(readers)})
    window, connections = 2.0, 4
    busiest = max(sum(1 for t in handler.times if start <= t < start + window) for start in handler.times)
    # one budget: at most rate * window slots in a window, plus one late message per connection;
    # each process on its own budget would put about twice the rate in it
    assert busiest <= rate * window + connections + 1, busiest


# Several daemons on one database.


def start_run(tmp_path, *args: str) -> subprocess.Popen:
    """A `newsletter run` process on the test's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = "s"
    command = [sys.executable, "-m", "newsletter", "--config", str(tmp_path / "newsletter.toml"), "run", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


MORNING = "2026-06-24T07:01:00+00:00"  # send_time in UTC, the readers' zone


def test_two_daily_jobs_at_once_never_mail_a_reader_twice(smtp_server, make_sender, tmp_path):
    smtp_server.handler.delay = 0.002
    make_sender(smtp_server, count=len(READERS), smtp="connections = 2\n")
    jobs = [start_run(tmp_path, "--once", "--now", MORNING) for _ in range(2)]
    outputs = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    assert Counter(smtp_server.handler.recipients()) == Counter(dict.fromkeys(READERS, 1))


def test_a_daemon_that_dies_mid_send_leaves_nothing_stuck_for_the_other(smtp_server, make_sender, tmp_path):
    smtp_server.handler.delay = 0.01
    make_sender(smtp_server, count=len(READERS), smtp="connections = 2\n")
    daemon = start_run(tmp_path, "--heartbeat", "0.5", "--now", MORNING)
    deadline = time.monotonic() + 60
    while len(smtp_server.handler.messages) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    before = settled_count(smtp_server.handler)
    assert 30 <= before < len(READERS), "the kill must land in the middle of the send"
    other = start_run(tmp_path, "--once", "--now", MORNING)
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    received = Counter(smtp_server.handler.recipients())
    assert set(received) == set(READERS)
    assert sum(received.values()) - len(READERS) <= 2, "only the dead daemon's messages in flight (one per connection)"


def test_two_syncs_of_the_subscriber_csv_at_once_keep_every_row_of_the_file(tmp_path):
    from newsletter import state
    from newsletter.subscribers import sync_stamp

    db = sqlite.connect(tmp_path / "var")
    rows = [(f"reader{i}@example.com", "", "", "daily", "monday") for i in range(3)]
    state.upsert_csv_rows(db, [*rows, ("gone@example.com", "", "", "daily", "monday")], "0a1b2c3d4e5f6a7b")
    first, second = sync_stamp(), sync_stamp()  # two senders start syncing the same file
    state.upsert_csv_rows(db, rows[:2], first)
    state.upsert_csv_rows(db, rows, second)  # the second sync overtakes the first ...
    state.upsert_csv_rows(db, rows[2:], first)  # ... which then finds the last row too
    assert state.finish_csv_sync(db, "subscribers.csv", "sig", first) == 1  # only the address not in the file left
    assert state.finish_csv_sync(db, "subscribers.csv", "sig", second) == 0
    assert sorted(row["email"] for row in state.subscriber_rows(db)) == [row[0] for row in rows]


def test_processes_apply_to_a_real_send_only(smtp_server, make_sender, tmp_path):
    from click.testing import CliRunner

    from newsletter.cli import cli

    make_sender(smtp_server, count=2)
    config = str(tmp_path / "newsletter.toml")
    result = CliRunner().invoke(
        cli, ["--config", config, "send", "--dry-run", "--processes", "2"], env={"NEWSLETTER_SECRET": "s"}
    )
    assert result.exit_code == 2 and "only a real send of the edition uses several processes" in result.output
    assert smtp_server.handler.messages == []


# Sending while the edition is still being planned.


def test_rows_planned_behind_the_first_pass_are_taken_and_the_run_waits_for_the_planning(smtp_server, make_sender):
    import threading

    from newsletter.sending.engine import Claims

    ledger = DatabaseLedger(storage.connect(make_sender(smtp_server)))
    plan = lambda *keys: ledger.plan(DAY, (Subscriber(f"{k}@example.com") for k in keys), lambda s: f"<{s.key}>")  # noqa: E731
    planning = threading.Event()
    claims = Claims(ledger, DAY, lease=60, batch=10, planning=planning)
    keys = lambda batch: [due.subscriber.key.split("@")[0] for due in batch]  # noqa: E731
    plan("b", "d")
    assert keys(claims.next_batch()) == ["b", "d"]
    plan("a", "c", "e")  # the file's order: anywhere in key order
    assert keys(claims.next_batch()) == ["e"]
    assert keys(claims.next_batch()) == ["a", "c"], "a second walk takes what was planned behind the first"
    ledger.mark_failed(DAY, "a@example.com", "451 later")  # given up on in this run
    assert claims.next_batch() == [], "planning goes on: ask again soon"
    plan("f", "0")
    planning.set()
    assert keys(claims.next_batch()) == ["f"]
    assert keys(claims.next_batch()) == ["0"], "once planning ends, one last walk from the first key"
    assert claims.next_batch() is None, "every row taken; a failed row stays failed in this run"
