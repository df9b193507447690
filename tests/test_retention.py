"""newsletter prune: old editions' recipient rows folded into per-edition totals, status unchanged, state bounded."""

import threading
from dataclasses import replace
from datetime import UTC, date, datetime
from email.utils import format_datetime

import pytest
from click.testing import CliRunner

from newsletter import retention, state, storage
from newsletter.bounces import import_bounce
from newsletter.cli import cli
from newsletter.editions import dry_run, send_day, send_test_copy
from newsletter.errors import DeliveryError
from newsletter.ledger import DatabaseLedger, DigestLedger
from newsletter.mail.inbox import import_paths
from newsletter.scheduler import Daily
from newsletter.status import edition_detail, overview
from newsletter.subscribers import Subscriber
from tests import test_status
from tests.test_bounces import dsn
from tests.test_inbox import mailto_unsubscribe

OLD, RECENT = date(2026, 6, 24), date(2026, 6, 25)
TODAY = date(2026, 7, 9)  # with keep_days 14 the first date kept whole is June 25: June 24 is folded
NOW = datetime(2026, 7, 9, 12, 0, tzinfo=UTC)


four_readers = test_status.four_readers  # the fixture: four readers, one bounced, one deferred


@pytest.fixture
def sent(four_readers, monkeypatch):
    """Two editions to four readers (delivered, bounced, failed), seven test copies, two suppressions."""
    settings = four_readers
    send_day(settings, OLD)
    send_test_copy(settings, OLD, "me0@example.org")
    conn = storage.connect(settings)
    for n in range(1, 6):  # more old test copies than status lists: the oldest are folded, the newest five stay
        DatabaseLedger(conn).record_test_send(OLD, f"me{n}@example.org", "delivered", "250 ok", f"<t{n}@example.org>")
    send_day(settings, RECENT)
    send_test_copy(settings, RECENT, "me@example.org")
    state.suppress(conn, "stranger@example.net", "complained", "abuse report")
    conn.close()
    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")
    return settings


@pytest.fixture
def conn(sent):
    conn = storage.connect(sent)
    yield conn
    conn.close()


def rows(conn, table, day):
    return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} WHERE day = ? ORDER BY 1, 2", (day.isoformat(),))]


def everything_status_shows(settings, conn):
    detail = [edition_detail(conn, day) for day in (OLD, RECENT)]
    return overview(settings, conn, NOW), [(d["event"], d["counts"], d["digest_counts"]) for d in detail]


def test_status_shows_the_same_numbers_before_and_after(sent, conn):
    before = everything_status_shows(sent, conn)
    result = retention.prune(conn, TODAY, 14)
    assert [f.day for f in result.folded] == [OLD] and result.kept == 1
    assert everything_status_shows(sent, conn) == before
    assert before[1][0][1] == {"pending": 0, "delivered": 2, "failed": 1, "bounced": 1, "skipped": 0}
    assert rows(conn, "deliveries", OLD) == []  # the rows are gone; their counts live on in the totals
    assert edition_detail(conn, OLD)["pruned"] and not edition_detail(conn, RECENT)["pruned"]


def test_the_status_command_prints_the_same_tables(sent, conn):
    def status(*args):
        result = CliRunner().invoke(cli, ["--config", str(sent.source), "status", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    before = status()
    retention.prune(conn, TODAY, 14)
    after = status()
    assert after == before  # 'next due' reads the clock, but both ran within the same minute
    detail = status("--date", OLD.isoformat())
    assert "pending 0, delivered 2, failed 1, bounced 1, skipped 0" in detail and "pruned:" in detail


def test_pruning_twice_changes_nothing_the_second_time(sent, conn):
    first = retention.prune(conn, TODAY, 14)
    totals = [tuple(r) for r in conn.execute("SELECT * FROM edition_totals ORDER BY 1, 2, 3")]
    second = retention.prune(conn, TODAY, 14)
    assert first.folded and second.folded == []
    assert [tuple(r) for r in conn.execute("SELECT * FROM edition_totals ORDER BY 1, 2, 3")] == totals
    assert second.summary().startswith("nothing to fold: no recipient rows older than 2026-06-25 (keep_days 14)")


def test_rows_within_keep_days_and_the_suppression_list_are_untouched(sent, conn):
    recent = rows(conn, "deliveries", RECENT), rows(conn, "test_sends", RECENT)
    suppressions = [tuple(row) for row in state.suppression_rows(conn)]
    retention.prune(conn, TODAY, 14)
    assert (rows(conn, "deliveries", RECENT), rows(conn, "test_sends", RECENT)) == recent
    assert [tuple(row) for row in state.suppression_rows(conn)] == suppressions
    kept = [r[0] for r in conn.execute("SELECT email FROM test_sends ORDER BY id")]
    assert kept == ["me2@example.org", "me3@example.org", "me4@example.org", "me5@example.org", "me@example.org"]
    assert retention.totals_of(conn, OLD, "test") == {"delivered": 2}  # me0 and me1 are older than the newest five


def test_keep_days_zero_keeps_everything(sent, conn):
    result = retention.prune(conn, date(2030, 1, 1), 0)
    assert result.folded == [] and "nothing folded" in result.summary()
    assert len(rows(conn, "deliveries", OLD)) == 4


def test_a_bounce_for_a_recent_message_still_matches_its_row(sent, conn, tmp_path):
    retention.prune(conn, TODAY, 14)
    (message_id,) = conn.execute(
        "SELECT message_id FROM deliveries WHERE day = ? AND email = 'dan@example.com'", (RECENT.isoformat(),)
    ).fetchone()
    path = dsn(tmp_path / "b.eml", "forwarded@example.net", "5.1.1", message_id=message_id)
    [report] = import_bounce(path, conn)
    assert (report.action, report.address) == ("suppressed", "dan@example.com")
    status = conn.execute(
        "SELECT status FROM deliveries WHERE day = ? AND email = 'dan@example.com'", (RECENT.isoformat(),)
    )
    assert status.fetchone()[0] == "bounced"  # the row found by its Message-ID


def test_a_bounce_for_a_folded_edition_falls_back_to_the_failed_recipient(sent, conn, tmp_path):
    retention.prune(conn, TODAY, 14)
    path = dsn(tmp_path / "b.eml", "dan@example.com", "5.1.1", message_id="<20260624.gone@example.org>")
    [report] = import_bounce(path, conn)
    assert (report.action, report.address) == ("suppressed", "dan@example.com")
    assert DatabaseLedger(conn).counts(OLD)["bounced"] == 1  # the totals are history: not rewritten


CRASH = {
    "sqlite": [
        "CREATE TRIGGER crash BEFORE DELETE ON deliveries WHEN old.day = '2026-06-26' "
        "BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF OLD.day = '2026-06-26' THEN RAISE EXCEPTION 'simulated crash'; END IF; RETURN OLD; END $$",
        "CREATE TRIGGER crash BEFORE DELETE ON deliveries FOR EACH ROW EXECUTE FUNCTION crash()",
    ],
}


def test_a_crash_mid_prune_loses_nothing_and_counts_nothing_twice(sent, conn):
    newer = date(2026, 6, 26)
    ledger = DatabaseLedger(conn)
    ledger.plan(newer, [Subscriber("eve@example.com")], lambda s: "<x@example.org>")
    for statement in CRASH[conn.backend]:  # the fold of that edition fails half-way, after its totals were written
        conn.execute(statement)
    with pytest.raises(Exception, match="simulated crash"):
        retention.prune(conn, date(2026, 7, 11), 14)
    assert rows(conn, "deliveries", OLD) == [] and len(rows(conn, "deliveries", newer)) == 1
    assert retention.totals_of(conn, newer, "edition") == {}  # rolled back with the failed delete
    conn.execute("DROP TRIGGER crash" + (" ON deliveries" if conn.backend == "postgresql" else ""))
    retention.prune(conn, date(2026, 7, 11), 14)
    assert ledger.counts(OLD)["delivered"] == 2 and ledger.counts(newer)["pending"] == 1
    assert sum(retention.totals_of(conn, RECENT, "edition").values()) == 3  # Bob, suppressed, was not planned


def test_two_prunes_at_once_fold_each_edition_once(sent, conn):
    before = DatabaseLedger(conn).editions()
    others = [storage.connect(sent) for _ in range(2)]
    threads = [threading.Thread(target=retention.prune, args=(db, TODAY, 14)) for db in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in others:
        db.close()
    assert DatabaseLedger(conn).editions() == before  # nothing counted twice, nothing lost


def test_digest_rows_are_folded_into_their_own_totals(sent, conn):
    digests = DigestLedger(conn)
    digests.plan_digests(OLD, [(Subscriber("w@example.com"), date(2026, 6, 18), "<w@example.org>")])
    digests.mark_delivered(OLD, "w@example.com", "250 ok")
    before = digests.editions(), DatabaseLedger(conn).editions()
    retention.prune(conn, TODAY, 14)
    assert (digests.editions(), DatabaseLedger(conn).editions()) == before
    assert retention.totals_of(conn, OLD, "digest") == {"delivered": 1}


def test_a_folded_edition_cannot_be_sent_again(sent, conn):
    retention.prune(conn, TODAY, 14)
    with pytest.raises(DeliveryError, match="the 2026-06-24 edition was pruned .* cannot be sent again"):
        send_day(sent, OLD)
    with pytest.raises(DeliveryError, match="was pruned"):
        send_day(sent, OLD, retry_failed=True)
    with pytest.raises(DeliveryError, match="was pruned"):
        dry_run(sent, OLD)


def test_the_daily_job_prunes_once_a_day(sent, conn, caplog):
    caplog.set_level("INFO", logger="newsletter")
    keeping = Daily(replace(sent, database=replace(sent.database, keep_days=0)))  # 0 keeps everything
    keeping.beat(datetime(2026, 7, 9, 3, 0, tzinfo=UTC))
    assert rows(conn, "deliveries", OLD) != []
    daily = Daily(replace(sent, database=replace(sent.database, keep_days=14)))
    daily.beat(datetime(2026, 7, 9, 3, 0, tzinfo=UTC))
    assert rows(conn, "deliveries", OLD) == [] and rows(conn, "deliveries", RECENT) != []
    assert "folded 1 edition older than 2026-06-25 (keep_days 14)" in caplog.text
    DatabaseLedger(conn).plan(OLD, [Subscriber("late@example.com")], lambda s: "<l@example.org>")  # a stray row
    Daily(daily.settings).beat(datetime(2026, 7, 9, 4, 0, tzinfo=UTC))  # another process, the same day: done already
    assert len(rows(conn, "deliveries", OLD)) == 1
    Daily(daily.settings).beat(datetime(2026, 7, 10, 3, 0, tzinfo=UTC))  # the next day
    assert rows(conn, "deliveries", OLD) == [] and rows(conn, "deliveries", RECENT) == []


def invoke(settings, *args):
    return CliRunner().invoke(cli, ["--config", str(settings.source), *args])


def test_the_prune_command_says_what_it_folded(sent, conn, tmp_path):
    conn.execute("UPDATE deliveries SET day = '2000-01-02' WHERE day = ?", (OLD.isoformat(),))  # long ago
    import_at(sent, conn, unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LONG_AGO), HANDLED_LONG_AGO)
    result = invoke(sent, "prune", "--keep-days", "30")  # today from the clock: June 2026 is folded too, later
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "2000-01-02: 4 recipient rows (1 bounced, 2 delivered, 1 failed)"
    assert "folded" in result.stdout.splitlines()[-1] and "the suppression list is unchanged" in result.stdout
    assert "; 1 inbox record handled before " in result.stdout
    again = invoke(sent, "prune", "--keep-days", "30")
    assert again.exit_code == 0 and again.stdout.startswith("nothing to fold")


@pytest.mark.parametrize("days", ["5", "-1", "13"])
def test_keep_days_under_two_weeks_is_refused(settings, days):
    result = invoke(settings, "prune", "--keep-days", days)
    assert result.exit_code == 2 and "must be 0 (keep everything) or at least 14" in result.output


# The inbox's record: one key per handled message, so that a message imported again changes nothing.
# Prune deletes the records handled before the cutoff; a message of that time is then too old to act on.

HANDLED_LONG_AGO = datetime(2026, 6, 20, 9, 0, tzinfo=UTC)  # before the cutoff (June 25 with keep_days 14)
HANDLED_LATELY = datetime(2026, 6, 25, 0, 30, tzinfo=UTC)  # on the cutoff's date: kept


def unsubscribe_mail(tmp_path, sender, dated):
    """A reader's mail to the List-Unsubscribe address, as a file in the bounce mailbox (its own Message-ID)."""
    path = tmp_path / f"{sender}-{dated:%Y%m%d}.eml"
    path.write_bytes(
        mailto_unsubscribe(sender, subject=f"unsubscribe-{dated:%Y%m%d}", Date=format_datetime(dated)).as_bytes()
    )
    return path


def import_at(settings, conn, path, now):
    [report] = import_paths([path], settings, conn, now=now)
    return report


def test_prune_deletes_the_inbox_records_handled_before_the_cutoff_and_says_how_many(sent, conn, tmp_path):
    old = unsubscribe_mail(tmp_path, "ada@example.com", HANDLED_LONG_AGO)
    recent = unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LATELY)
    assert import_at(sent, conn, old, HANDLED_LONG_AGO).outcomes[0].action == "unsubscribed"
    assert import_at(sent, conn, recent, HANDLED_LATELY).outcomes[0].action == "unsubscribed"
    result = retention.prune(conn, TODAY, 14)
    assert result.inbox == 1
    assert result.summary().endswith(
        "1 edition kept whole; 1 inbox record handled before 2026-06-25 deleted; the suppression list is unchanged"
    )
    assert import_at(sent, conn, old, NOW).handled_before == ""  # its record is gone
    assert import_at(sent, conn, recent, NOW).handled_before == "2026-06-25"  # its record stays
    again = retention.prune(conn, TODAY, 14)  # the old one is recorded again, as handled (ignored) today
    assert again.inbox == 0 and "inbox" not in again.summary()


def test_a_message_handled_lately_is_still_a_duplicate_after_a_prune(sent, conn, tmp_path):
    mail = unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LATELY)
    import_at(sent, conn, mail, HANDLED_LATELY)
    assert state.lift_suppression(conn, "dan@example.com")  # Dan subscribed again since
    retention.prune(conn, TODAY, 14)
    report = import_at(sent, conn, mail, NOW)  # the Maildir's cur/ is read at every import
    assert report.lines() == [f"{mail}: already handled on 2026-06-25; nothing changed"]
    assert state.suppression_of(conn, "dan@example.com") is None


def test_a_message_whose_record_was_pruned_is_not_acted_on_again(sent, conn, tmp_path):
    mail = unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LONG_AGO)
    import_at(sent, conn, mail, HANDLED_LONG_AGO)
    assert state.lift_suppression(conn, "dan@example.com")  # Dan subscribed again since
    assert retention.prune(conn, TODAY, 14).inbox == 1
    [outcome] = import_at(sent, conn, mail, NOW).outcomes
    assert (outcome.action, outcome.detail) == (
        "ignored",
        "dated 2026-06-20, before 2026-06-26: the inbox records of its time were pruned (database.keep_days), "
        "so it may have been handled already; not acted on",
    )
    assert state.suppression_of(conn, "dan@example.com") is None  # the old mail did not unsubscribe him again
    fresh = unsubscribe_mail(tmp_path, "dan@example.com", datetime(2026, 7, 8, tzinfo=UTC))
    assert import_at(sent, conn, fresh, NOW).outcomes[0].action == "unsubscribed"  # a new request is acted on


def test_keep_days_zero_keeps_every_inbox_record(sent, conn, tmp_path):
    mail = unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LONG_AGO)
    import_at(sent, conn, mail, HANDLED_LONG_AGO)
    assert retention.prune(conn, date(2030, 1, 1), 0).inbox == 0
    assert import_at(sent, conn, mail, NOW).handled_before == "2026-06-20"


INBOX_CRASH = {
    "sqlite": [
        "CREATE TRIGGER crash BEFORE INSERT ON notices WHEN new.kind = 'inbox-pruned' "
        "BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.kind = 'inbox-pruned' THEN RAISE EXCEPTION 'simulated crash'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER crash BEFORE INSERT ON notices FOR EACH ROW EXECUTE FUNCTION crash()",
    ],
}


def test_a_crash_before_the_horizon_is_recorded_keeps_the_inbox_records(sent, conn, tmp_path):
    mail = unsubscribe_mail(tmp_path, "dan@example.com", HANDLED_LONG_AGO)
    import_at(sent, conn, mail, HANDLED_LONG_AGO)
    for statement in INBOX_CRASH[conn.backend]:  # the records are deleted, then recording the horizon fails
        conn.execute(statement)
    with pytest.raises(Exception, match="simulated crash"):
        retention.prune(conn, TODAY, 14)
    assert import_at(sent, conn, mail, NOW).handled_before == "2026-06-20"  # rolled back: still known
