"""Senders sharing an edition on PostgreSQL: three `newsletter send` processes, one killed with SIGKILL.

Claims there take rows with SELECT ... FOR UPDATE SKIP LOCKED; the server on 127.0.0.1
counts the messages per recipient once it settles.
"""

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import psycopg
import pytest

from newsletter import storage
from newsletter.ledger import DatabaseLedger
from newsletter.storage import postgres
from newsletter.subscribers import Subscriber
from tests import test_delivery
from tests.conftest import subprocess_env
from tests.test_delivery import DAY, settled_count

make_sender = test_delivery.make_sender  # the fixture: settings that send to a given server

READERS = [f"reader{i}@example.com" for i in range(300)]
_names = itertools.count(1)


def on_postgres(make_sender, server, pg_server, count, smtp=""):
    """Settings that send to ``server`` with the state in a fresh PostgreSQL database."""
    url = pg_server.fresh_database(f"senders{os.getpid()}_{next(_names)}")
    return make_sender(server, count=count, smtp=f'{smtp}\n[database]\nurl = "{url}"\nlease_seconds = 5\n')


def start_send(tmp_path, *args: str) -> subprocess.Popen:
    env = subprocess_env(NEWSLETTER_SECRET="s")
    command = [sys.executable, "-m", "newsletter", "--config", str(tmp_path / "newsletter.toml"), "send", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_senders_one_killed_everyone_gets_the_edition_duplicates_at_most_its_connections(
    smtp_server, make_sender, pg_server, tmp_path
):
    smtp_server.handler.delay = 0.01
    settings = on_postgres(make_sender, smtp_server, pg_server, len(READERS), "connections = 2\n")
    senders = [start_send(tmp_path, "--date", DAY.isoformat()) for _ in range(3)]
    deadline = time.monotonic() + 60
    while len(smtp_server.handler.messages) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    senders[0].send_signal(signal.SIGKILL)
    outputs = [sender.communicate(timeout=120) for sender in senders[1:]]
    senders[0].wait(timeout=10)
    assert [sender.returncode for sender in senders[1:]] == [0, 0], outputs
    settled_count(smtp_server.handler)  # a message the killed sender had in flight may still be arriving
    received = Counter(smtp_server.handler.recipients())
    assert set(received) == set(READERS), "every subscriber got the edition"
    assert sum(received.values()) - len(READERS) <= 2, "duplicates: at most the killed sender's two connections"
    with storage.connect(settings) as db:
        counts = DatabaseLedger(db).counts(DAY)
        leased = db.execute("SELECT COUNT(*) FROM deliveries WHERE lease_owner != ''").fetchone()[0]
    assert counts["delivered"] == len(READERS) and leased == 0


def test_claims_on_postgres_skip_each_others_rows_and_take_over_expired_leases(smtp_server, make_sender, pg_server):
    settings = on_postgres(make_sender, smtp_server, pg_server, 0)
    with storage.connect(settings) as first, storage.connect(settings) as second:
        ledger, other = DatabaseLedger(first), DatabaseLedger(second)
        ledger.plan(DAY, (Subscriber(address) for address in READERS[:30]), lambda s: f"<{s.key}>")
        with first.transaction():  # a claim of the first sender is under way: its rows are locked
            mine = ledger.claim(DAY, "a", now=1000.0, until=1060.0, limit=10, after="")
            theirs = other.claim(DAY, "b", now=1000.0, until=1060.0, limit=10, after="")
        assert len(mine) == len(theirs) == 10
        assert not {d.subscriber.key for d in mine} & {d.subscriber.key for d in theirs}
        taken = other.claim(DAY, "c", now=1061.0, until=1121.0, limit=30, after=None)
        assert len(taken) == 20, "both leases ran out: their rows return to the pool"


# --- what one message costs the database ------------------------------------------------------


@pytest.fixture
def fresh_ledger(pg_server):
    """A ledger on a fresh PostgreSQL database."""
    with postgres.connect(pg_server.fresh_database(f"cost{os.getpid()}_{next(_names)}")) as db:
        yield DatabaseLedger(db)


def rows_read_from_deliveries(plan: dict) -> int:
    """The rows that the scans of ``deliveries`` in an EXPLAIN ANALYZE plan (JSON) returned, in all."""
    own = plan["Actual Rows"] * plan.get("Actual Loops", 1) if plan.get("Relation Name") == "deliveries" else 0
    return own + sum(rows_read_from_deliveries(child) for child in plan.get("Plans", ()))


def explain_claim(ledger: DatabaseLedger, after: str | None, *, generic: bool, after_row: int | None = None) -> dict:
    """EXPLAIN ANALYZE of the ledger's claim of 16 rows (rolled back), as psycopg's prepared statement would run it."""
    sql, params = ledger.claim_statement(DAY, "me", 1000.0, 1300.0, 16, after, False, after_row=after_row)
    numbered = itertools.count(1)
    prepared = re.sub(r"%s", lambda _: f"${next(numbered)}", postgres.pg_sql(sql))
    conn = ledger.conn.conn
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
        conn.execute(f"PREPARE claim AS {prepared}")
        cursor = psycopg.ClientCursor(conn)  # the parameters as literals in EXECUTE
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim({', '.join(['%s'] * len(params))})", params)
        plan = cursor.fetchone()[0][0]["Plan"]
        conn.execute("DEALLOCATE claim")
    return plan


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
def test_a_claim_reads_the_rows_it_takes_not_the_whole_edition(fresh_ledger, generic):
    ledger = fresh_ledger
    ledger.conn.execute("ANALYZE deliveries")  # statistics of an empty table, as a previous day's autovacuum leaves them
    ledger.plan(DAY, (Subscriber(f"reader{i:05}@example.com") for i in range(3000)), lambda s: f"<{s.key}>")
    for after, after_row in (("", None), ("reader01500@example.com", None), (None, 1500)):  # by key, by row id
        plan = explain_claim(ledger, after, generic=generic, after_row=after_row)
        assert plan["Actual Rows"] == 16
        assert rows_read_from_deliveries(plan) <= 4 * 16, "a claim walks the key, it does not scan the edition"


def test_a_claim_while_the_list_is_planned_reads_the_rows_it_takes(fresh_ledger):
    ledger = fresh_ledger
    ledger.conn.execute("ANALYZE deliveries")  # statistics of an empty table
    seen: list[dict] = []

    def readers():
        for i in range(12_000):
            if i == 10_000:  # the sender claims meanwhile (a planner thread and the senders share the table)
                seen.append(explain_claim(ledger, "reader05000@example.com", generic=False))
            yield Subscriber(f"reader{i:05}@example.com")

    ledger.plan(DAY, readers(), lambda s: f"<{s.key}>")
    assert seen[0]["Actual Rows"] == 16 and rows_read_from_deliveries(seen[0]) <= 4 * 16


def test_an_acceptance_group_is_one_round_trip_on_postgres(fresh_ledger, monkeypatch):
    ledger = fresh_ledger
    ledger.plan(DAY, (Subscriber(address) for address in READERS[:5]), lambda s: f"<{s.key}>")
    ledger.claim(DAY, "me", now=1000.0, until=1300.0, limit=5, after="")
    calls: list[str] = []
    real = ledger.conn._executemany
    monkeypatch.setattr(ledger.conn, "_executemany", lambda sql, rows: calls.append(sql) or real(sql, rows))
    monkeypatch.setattr(ledger.conn, "_execute", None)  # no BEGIN, no COMMIT
    monkeypatch.setattr(ledger.conn, "_begin", None)
    ledger.mark_delivered_many(DAY, [("Reader0@Example.com", "250 ok: queued as A"), (READERS[1], "250 ok: B")])
    assert len(calls) == 1, "one pipeline: one round trip, one implicit transaction"
    monkeypatch.undo()
    single: list[str] = []
    real_one = ledger.conn._execute
    monkeypatch.setattr(ledger.conn, "_execute", lambda sql, params: single.append(sql) or real_one(sql, params))
    monkeypatch.setattr(ledger.conn, "_executemany", None)
    monkeypatch.setattr(ledger.conn, "_begin", None)
    ledger.mark_delivered_many(DAY, [(READERS[4], "250 ok: E")])
    assert len(single) == 1 and single[0].startswith("UPDATE"), "one acceptance: one statement, no BEGIN or COMMIT"
    monkeypatch.undo()
    rows = {row["email"]: row for row in ledger.conn.execute("SELECT * FROM deliveries")}
    assert [rows[a]["last_reply"] for a in READERS[:2]] == ["250 ok: queued as A", "250 ok: B"]
    assert all(rows[a]["status"] == "delivered" and rows[a]["attempts"] == 1 for a in READERS[:2])
    assert all(rows[a]["lease_owner"] == "" and rows[a]["lease_until"] == 0 for a in READERS[:2])
    assert {rows[a]["status"] for a in READERS[2:4]} == {"pending"} and rows[READERS[2]]["lease_owner"] == "me"
    assert rows[READERS[4]]["status"] == "delivered" and rows[READERS[4]]["last_reply"] == "250 ok: E"
    ledger.mark_delivered_many(DAY, [(READERS[0], "250 again")])  # recorded twice (a replay): no change
    row = ledger.conn.execute("SELECT attempts, last_reply FROM deliveries WHERE email = ?", (READERS[0],)).fetchone()
    assert tuple(row) == (1, "250 ok: queued as A")


def test_an_acceptance_group_that_fails_records_none_of_it(fresh_ledger):
    ledger = fresh_ledger
    ledger.plan(DAY, (Subscriber(address) for address in READERS[:3]), lambda s: f"<{s.key}>")
    ledger.conn.execute("ALTER TABLE deliveries ADD CONSTRAINT no_reply_b CHECK (last_reply != '250 B')")
    with pytest.raises(psycopg.errors.CheckViolation):
        ledger.mark_delivered_many(DAY, [(READERS[0], "250 A"), (READERS[1], "250 B"), (READERS[2], "250 C")])
    rows = ledger.conn.execute("SELECT DISTINCT status FROM deliveries").fetchall()
    assert [row[0] for row in rows] == ["pending"], "the group is one transaction: all or nothing"


def test_planning_on_postgres_is_one_statement_a_batch_in_the_given_order(fresh_ledger, monkeypatch):
    ledger = fresh_ledger
    statements: list[str] = []
    real = ledger.conn._execute
    monkeypatch.setattr(ledger.conn, "_execute", lambda sql, params: statements.append(sql) or real(sql, params))
    readers = [Subscriber(f"r{i}@example.com", name=f"R {i}") for i in (5, 3, 9, 1, 7)]
    assert ledger.plan(DAY, readers, lambda s: f"<{s.key}>", batch=2) == 5
    assert len([sql for sql in statements if sql.startswith("INSERT")]) == 3
    assert ledger.plan(DAY, readers[:3], lambda s: "<again>", batch=2) == 0, "rows already planned stay as they are"
    rows = ledger.conn.execute(f"SELECT email, name, message_id FROM deliveries ORDER BY {ledger.conn.rowid}").fetchall()
    assert [tuple(row) for row in rows] == [(r.key, r.name, f"<{r.key}>") for r in readers]


def test_a_messages_writes_update_its_row_in_place_hot(fresh_ledger):
    ledger = fresh_ledger
    ledger.plan(DAY, (Subscriber(f"reader{i:04}@example.com") for i in range(300)), lambda s: f"<{s.key}>")
    for batch in range(3):
        due = ledger.claim(DAY, "me", now=1000.0, until=1300.0, limit=64, after=f"reader{batch * 64:04}@example.com")
        keys = [d.subscriber.key for d in due]
        for group in range(0, len(keys), 3):  # acceptances come in small groups
            ledger.mark_delivered_many(DAY, [(key, "250 ok") for key in keys[group : group + 3]])
    ledger.renew(DAY, "me", 1400.0)
    ledger.conn.execute("SELECT pg_stat_force_next_flush()")
    updated, hot = ledger.conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'deliveries'"
    ).fetchone()
    assert updated == 2 * 3 * 64, "a claim and an acceptance a row"
    assert hot >= 0.95 * updated, "neither writes an indexed column, and the page has room: no new index entries"
