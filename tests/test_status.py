"""newsletter status: the operator's view of subscribers, suppressions, editions, test copies and what is due next."""

import json
from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner

from newsletter import state, storage
from newsletter.cli import cli
from newsletter.editions import send_day, send_test_copy
from newsletter.status import next_due, overview

DAY = date(2026, 6, 24)


@pytest.fixture
def four_readers(make_settings, event_folder, tmp_path, smtp_server):
    """Settings that mail Ada, Bob, Carol and Dan through the test server, which bounces Bob (550) and defers Carol (452)."""
    csv = tmp_path / "subscribers.csv"
    csv.write_text(
        "email,name,timezone\nada@example.com,Ada,Europe/London\nbob@example.com,Bob,\n"
        "carol@example.com,Carol,\ndan@example.com,Dan,America/New_York\n",
        encoding="utf-8",
    )
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\nmax_attempts = 1\n'
    settings = make_settings(toml, events=event_folder, state=tmp_path / "var", public=tmp_path / "p", subscribers=csv)
    smtp_server.handler.reject["bob@example.com"] = "550 5.1.1 no such user"
    smtp_server.handler.reject["carol@example.com"] = "452 4.2.2 mailbox full"
    return settings


@pytest.fixture
def sent(four_readers, monkeypatch):
    """An edition sent to four readers: two delivered, one bounced, one failed; a test copy; two suppressions."""
    settings = four_readers
    send_day(settings, DAY)
    send_test_copy(settings, DAY, "me@example.org")
    conn = storage.connect(settings)
    state.suppress(conn, "ada@example.com", "unsubscribed", "one-click")
    state.suppress(conn, "stranger@example.net", "complained", "abuse report")
    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")
    return settings


def status(settings, *args):
    result = CliRunner().invoke(cli, ["--config", str(settings.source), "status", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_overview_shows_every_part(sent):
    out = status(sent)
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert table["active"] == ["2", "0", "2"] and table["unsubscribed"][-1] == "1" and table["bounced"][-1] == "1"
    assert "suppressions: 1 unsubscribed, 1 bounced, 1 complained" in out
    (edition,) = [line.split() for line in out.splitlines() if line.startswith("2026-06-24  06-24")]
    assert edition[1:] == ["06-24-first-thing", "2", "1", "1", "0", "0"]  # delivered bounced failed pending skipped
    assert "test copies:" in out and "me@example.org" in out
    assert "next due:" in out and table["America/New_York"][0] == "1"  # one reader there


def test_status_of_a_date_shows_outcomes_and_the_last_replies_of_failures(sent):
    out = status(sent, "--date", "2026-06-24")
    assert "event: 06-24-first-thing" in out
    assert "pending 0, delivered 2, failed 1, bounced 1, skipped 0" in out
    lines = {line.split()[1]: line for line in out.splitlines() if "@example.com" in line}
    assert lines["bob@example.com"].startswith("bounced") and "550 5.1.1 no such user" in lines["bob@example.com"]
    assert lines["carol@example.com"].startswith("failed") and "452 4.2.2 mailbox full" in lines["carol@example.com"]
    assert "me@example.org" in out


def test_json_for_scripts(sent):
    data = json.loads(status(sent, "--json"))
    assert set(data) == {"subscribers", "suppressions", "editions", "test_copies", "next_due", "journaled"}
    assert data["editions"][0] == {
        "date": "2026-06-24", "kind": "edition", "event": "06-24-first-thing",
        "pending": 0, "delivered": 2, "failed": 1, "bounced": 1, "skipped": 0,
    }  # fmt: skip
    assert data["test_copies"][0]["email"] == "me@example.org" and data["test_copies"][0]["status"] == "delivered"
    detail = json.loads(status(sent, "--date", "2026-06-24", "--json"))
    assert {f["email"]: f["last_reply"] for f in detail["not_delivered"]} == {
        "bob@example.com": "550 5.1.1 no such user",
        "carol@example.com": "452 4.2.2 mailbox full",
    }


def test_next_due_per_zone_from_the_clock_and_the_ledger(sent):
    conn = storage.connect(sent)
    due = {z["zone"]: z for z in next_due(sent, conn, datetime(2026, 6, 24, 7, 30, tzinfo=UTC))}
    # UTC (Carol, failed): inside the window with a reader unmailed: due now; London, mailed (Ada now unsubscribed
    # and Bob bounced are off the list): tomorrow at 07:00 BST; New York: 07:00 EDT today, still ahead.
    assert due["UTC"]["due_now"] and due["UTC"]["date"] == "2026-06-24"
    assert "Europe/London" not in due  # Ada unsubscribed: no reader left there
    assert (due["America/New_York"]["date"], due["America/New_York"]["at"]) == (
        "2026-06-24",
        "2026-06-24T07:00:00-04:00",
    )
    later = {z["zone"]: z for z in next_due(sent, conn, datetime(2026, 6, 24, 14, 0, tzinfo=UTC))}
    assert later["UTC"]["date"] == "2026-06-25" and not later["UTC"]["due_now"]  # the window has passed


def test_a_fresh_install_shows_its_subscribers_and_next_due(make_settings, tmp_path, monkeypatch):
    settings = make_settings(state=tmp_path / "var")
    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")
    out = status(settings)
    assert "editions: none sent yet" in out and "test copies: none" in out
    assert {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}["active"][-1] == "5"
    assert "next due:" in out
    assert set(overview(settings, storage.connect(settings), datetime.now(UTC))) >= {"next_due"}


def test_a_weekly_reader_is_due_on_their_weekday(sent):
    conn = storage.connect(sent)
    state.add_subscriber(
        conn, "w@example.com", timezone="Asia/Tokyo", frequency="weekly", weekday="friday", source="cli"
    )
    due = {z["zone"]: z for z in next_due(sent, conn, datetime(2026, 6, 24, 7, 30, tzinfo=UTC))}  # a Wednesday
    tokyo = due["Asia/Tokyo"]
    assert (tokyo["date"], tokyo["at"], tokyo["readers"], tokyo["weekly_digests"]) == (
        "2026-06-26",
        "2026-06-26T07:00:00+09:00",
        1,
        1,
    )
