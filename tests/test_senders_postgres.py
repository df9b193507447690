"""Senders sharing an edition on PostgreSQL: three `newsletter send` processes, one killed with SIGKILL.

Claims there take rows with SELECT ... FOR UPDATE SKIP LOCKED; the server on 127.0.0.1
counts the messages per recipient once it settles.
"""

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from newsletter import storage
from newsletter.ledger import DatabaseLedger
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
