"""The senders' journal on SQLite: an acceptance is one appended line, moved into the ledger in batches.

A sender holds a lock on its journal while it lives. A journal nobody holds (a killed
sender's) is applied before any of its rows is claimed again, so nothing it recorded is
sent twice; applying it twice changes nothing.
"""

import os
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from newsletter import status, storage
from newsletter.cli import cli, edition_text
from newsletter.editions import send_day
from newsletter.errors import DeliveryError
from newsletter.ledger import DatabaseLedger
from newsletter.mail.transport import Abort
from newsletter.sending import journal
from newsletter.sending.engine import Acceptances
from newsletter.sending.journal import Journal
from newsletter.storage import postgres, sqlite
from tests import test_delivery
from tests.test_delivery import DAY, ledger_rows
from tests.test_senders import planned_ledger

make_sender = test_delivery.make_sender  # the fixture: settings that send to a given server


@pytest.fixture
def ledger(smtp_server, make_sender):
    return planned_ledger(make_sender(smtp_server, count=6), 6)


def folder_of(ledger: DatabaseLedger):
    folder = journal.folder_of(ledger.conn)
    assert folder is not None, "a SQLite ledger keeps its senders' journals beside the database file"
    return folder


def statuses(ledger: DatabaseLedger) -> dict[str, str]:
    return {email: status for email, status in ledger.conn.execute("SELECT email, status FROM deliveries")}


def killed_sender(ledger: DatabaseLedger, owner: str, count: int) -> tuple[Journal, list[str]]:
    """A sender that leased ``count`` rows, recorded their acceptances in its journal and died before moving it."""
    now = time.time()
    emails = [d.subscriber.key for d in ledger.claim(DAY, owner, now=now, until=now + 300, limit=count, after="")]
    record = Journal(folder_of(ledger), owner)
    record.append(DAY, [(email, "250 2.0.0 queued") for email in emails])
    record.close()  # the process is gone: its lock with it
    return record, emails


def test_an_acceptance_is_a_line_in_the_journal_until_a_flush_moves_it_into_the_ledger(ledger):
    record = Journal(folder_of(ledger), "here:1:abc")
    record.append(DAY, [("reader0@example.com", "250 ok\tqueued")])
    assert record.path.read_text().splitlines()[1] == f"{DAY.isoformat()}\treader0@example.com\t250 ok queued"
    assert statuses(ledger)["reader0@example.com"] == "pending"
    record.flush(ledger)
    assert statuses(ledger)["reader0@example.com"] == "delivered"
    assert not record.path.exists() and list(folder_of(ledger).iterdir()) == []


def test_a_journal_is_due_after_enough_rows_or_time():
    clock = [0.0]
    record = Journal(journal.Path("/nonexistent"), "x", clock=lambda: clock[0])
    record.rows = [(DAY, "a@example.com", "250")]
    record.since = 0.0
    assert not record.due()
    clock[0] = journal.FLUSH_SECONDS
    assert record.due()
    record.rows = [(DAY, "a@example.com", "250")] * journal.FLUSH_ROWS
    record.since = clock[0]
    assert record.due()


def test_the_journal_of_a_killed_sender_is_applied_and_its_rows_are_not_sent_again(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=6)
    ledger = planned_ledger(settings, 6)
    record, done = killed_sender(ledger, "here:999999:dead", 2)
    result = send_day(settings, DAY)
    assert result.delivered == 4 and result.complete
    assert Counter(smtp_server.handler.recipients()) == Counter(
        {f"reader{i}@example.com": 1 for i in range(6) if f"reader{i}@example.com" not in done}
    )
    assert {ledger_rows(settings)[email]["last_reply"] for email in done} == {"250 2.0.0 queued"}
    assert not record.path.exists(), "an applied journal is removed"


def test_a_journal_its_sender_still_holds_is_left_alone(ledger):
    live = Journal(folder_of(ledger), "here:1:live")
    live.append(DAY, [("reader2@example.com", "250 ok")])  # the file stays locked while `live` is open
    assert journal.replay(folder_of(ledger), ledger) == 0
    assert statuses(ledger)["reader2@example.com"] == "pending" and live.path.exists()
    live.close()
    assert journal.replay(folder_of(ledger), ledger) == 1
    assert statuses(ledger)["reader2@example.com"] == "delivered"


def test_a_line_cut_short_by_a_crash_is_not_applied(ledger):
    record, done = killed_sender(ledger, "here:999999:dead", 2)
    with open(record.path, "ab") as out:
        out.write(f"{DAY.isoformat()}\treader5@exam".encode())  # the write that the crash cut short
    assert journal.replay(folder_of(ledger), ledger) == 2
    found = statuses(ledger)
    assert [found[email] for email in done] == ["delivered", "delivered"]
    assert found["reader5@example.com"] == "pending"


def test_applying_a_journal_again_changes_nothing_and_never_overrides_a_later_outcome(ledger):
    ledger.bounce(DAY, "reader5@example.com", "550 no such user")  # resent after a lease ran out, and bounced
    record, done = killed_sender(ledger, "here:999999:dead", 1)
    assert done == ["reader0@example.com"]
    with open(record.path, "a") as out:
        out.write(f"{DAY.isoformat()}\treader5@example.com\t250 ok\n")
    journal.replay(folder_of(ledger), ledger)
    copy = Journal(folder_of(ledger), "here:999999:again")
    copy.append(DAY, [("reader0@example.com", "250 again")])
    copy.close()
    journal.replay(folder_of(ledger), ledger)
    rows = {row["email"]: row for row in ledger.conn.execute("SELECT email, status, attempts, last_reply FROM deliveries")}
    assert rows["reader5@example.com"]["status"] == "bounced"
    assert (rows["reader0@example.com"]["status"], rows["reader0@example.com"]["attempts"]) == ("delivered", 1)
    assert rows["reader0@example.com"]["last_reply"] == "250 2.0.0 queued"


def test_a_journal_folder_that_cannot_be_used_stops_the_run_with_one_line_and_sends_nothing(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=3)
    storage.connect(settings).close()
    (settings.paths.state / "journal").write_text("not a folder")
    with pytest.raises(DeliveryError, match=r"cannot read the senders' journals in .*journal: Not a directory"):
        send_day(settings, DAY)
    assert {row["status"] for row in ledger_rows(settings).values()} == {"pending"}
    assert smtp_server.handler.messages == []
    os.remove(settings.paths.state / "journal")
    assert send_day(settings, DAY).delivered == 3


def test_an_acceptance_that_cannot_be_journaled_stops_the_run_before_the_next_content(ledger, tmp_path):
    (tmp_path / "full").write_text("")
    accepted = Acceptances(ledger, DAY, Journal(tmp_path / "full" / "journal", "here:1:x"))
    ticket = accepted.add("reader0@example.com", "250 ok")
    with pytest.raises(Abort, match=r"cannot record deliveries in .*full/journal/here_1_x.0.log: Not a directory"):
        accepted.ensure(ticket)
    assert statuses(ledger)["reader0@example.com"] == "pending"


def test_a_postgresql_ledger_keeps_no_journal(pg_server):
    with postgres.connect(pg_server.fresh_database("journal_none")) as db:
        assert journal.folder_of(db) is None


# What status shows after a sender stopped: its journal holds deliveries the ledger does not count yet.


def test_status_moves_a_stopped_senders_journal_into_the_ledger_before_it_counts(ledger):
    killed_sender(ledger, "gone:1:abc", 3)
    live = Journal(folder_of(ledger), "here:2:def")  # a sender still running moves its own journal
    live.append(DAY, [("reader5@example.com", "250 ok")])
    before = status.edition_detail(ledger.conn, DAY)
    assert (before["counts"]["delivered"], before["journaled"]) == (0, 3), "not counted yet, but shown"
    status.settle_journals(ledger.conn)
    after = status.edition_detail(ledger.conn, DAY)
    assert (after["counts"]["delivered"], after["journaled"]) == (3, 0)
    assert statuses(ledger)["reader5@example.com"] == "pending", "a live sender's journal is left to it"
    live.close()


def test_a_journal_the_ledger_cannot_take_yet_is_shown_beside_the_counts(smtp_server, make_sender, caplog):
    settings = make_sender(smtp_server, count=6)
    ledger = planned_ledger(settings, 6)
    killed_sender(ledger, "gone:1:abc", 2)
    readonly = sqlite.connect_readonly(settings.paths.state)
    assert readonly is not None
    status.settle_journals(readonly)  # the ledger refuses the write (read-only here, a full disk alike)
    assert "stay until the next send" in caplog.text
    detail = status.edition_detail(readonly, DAY)
    assert detail["journaled"] == 2
    assert f"journaled: 2 of {DAY.isoformat()} delivered but not yet in these counts" in edition_text(detail)
    assert status.overview(settings, readonly, datetime.now(UTC))["journaled"] == {DAY.isoformat(): 2}


def test_the_status_command_counts_a_stopped_senders_deliveries(smtp_server, make_sender, tmp_path, monkeypatch):
    settings = make_sender(smtp_server, count=6)
    killed_sender(planned_ledger(settings, 6), "gone:1:abc", 4)
    monkeypatch.setenv("NEWSLETTER_SECRET", "s")
    config = str(tmp_path / "newsletter.toml")
    result = CliRunner().invoke(cli, ["--config", config, "status", "--date", DAY.isoformat()], catch_exceptions=False)
    assert result.exit_code == 0 and "delivered 4" in result.stdout and "journaled" not in result.stdout
