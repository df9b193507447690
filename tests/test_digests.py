"""The weekly digest: one message on the reader's weekday with the past seven editions, exactly once."""

import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest
from click.testing import CliRunner

from newsletter import state, storage, subscribers
from newsletter.cli import cli
from newsletter.digests import first_day, is_digest_day
from newsletter.editions import send_day
from newsletter.subscribers import Subscriber
from tests.conftest import event_text, write_event

SUNDAY = date(2026, 6, 28)  # June 22 is a Monday


@pytest.fixture
def library(tmp_path):
    """One event a day from June 15 to July 5."""
    folder = tmp_path / "events"
    for offset in range(21):
        day = date(2026, 6, 15) + timedelta(days=offset)
        write_event(folder, f"{day:%m-%d}-story.md", event_text(f"Story of {day:%B} {day.day}", f"1990-{day:%m-%d}"))
    return folder


@pytest.fixture
def site(make_settings, library, tmp_path, smtp_server):
    """Settings mailing the test server; a CSV with one daily reader; a weekly reader added on the CLI."""
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name,timezone\ndaily@example.com,Dee,\n", encoding="utf-8")
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\nretry_delay = 0.01\n'
    settings = make_settings(toml, events=library, state=tmp_path / "var", public=tmp_path / "public", subscribers=csv)
    conn = storage.connect(settings)
    subscribers.add(conn, "weekly@example.com", name="Wes", frequency="weekly", weekday="sunday")
    conn.close()
    return settings


def mail(smtp_server):
    """(recipient, kind, subject) of every message received, in order."""
    return [
        (m.rcpt_tos[0], "digest" if ".digest." in m.message["Message-ID"] else "edition", m.message["Subject"])
        for m in smtp_server.handler.messages
    ]


def stories(message):
    """The dates of the editions a digest links to, and the title told in full."""
    html = message.get_body(("html",)).get_content()
    linked = re.findall(r'<h2[^>]*><a href="[^"]*/2026/(\d\d/\d\d)/"', html)
    full = re.search(r"<h1[^>]*>([^<]+)</h1>", html).group(1)
    return linked, full


def set_frequency(settings, address, frequency, weekday="sunday"):
    conn = storage.connect(settings)
    entry = subscribers.find(conn, address)
    state.update_preferences(
        conn, address, name=entry.name, timezone=entry.timezone, frequency=frequency, weekday=weekday
    )
    conn.close()


def test_the_digest_falls_on_the_readers_weekday_and_starts_after_their_last_message():
    weekly = Subscriber("w@example.com", frequency="weekly", weekday="sunday")
    assert is_digest_day(weekly, SUNDAY) and not is_digest_day(weekly, SUNDAY - timedelta(days=1))
    assert not is_digest_day(Subscriber("d@example.com"), SUNDAY)
    assert first_day(SUNDAY, None) == date(2026, 6, 22)  # the past seven editions, Sunday's own included
    assert first_day(SUNDAY, (date(2026, 6, 24), "edition")) == date(2026, 6, 25)
    assert first_day(SUNDAY, (date(2026, 6, 1), "edition")) == date(2026, 6, 22)


def test_a_weekly_reader_gets_one_digest_on_their_weekday_and_no_daily_edition(site, smtp_server):
    for offset in range(7):
        send_day(site, date(2026, 6, 22) + timedelta(days=offset))
    got = mail(smtp_server)
    assert [m for m in got if m[0] == "daily@example.com"] == [
        ("daily@example.com", "edition", f"June {d}: Story of June {d}") for d in range(22, 29)
    ]
    assert [m[:2] for m in got if m[0] == "weekly@example.com"] == [("weekly@example.com", "digest")]
    (digest,) = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == ["weekly@example.com"]]
    assert digest["Subject"] == "What happened today in history?: your week, June 22 to June 28"
    linked, full = stories(digest)
    assert linked == ["06/22", "06/23", "06/24", "06/25", "06/26", "06/27"] and full == "Story of June 28"
    text = digest.get_body(("plain",)).get_content()
    assert "WHAT HAPPENED" in text and "Story of June 22" in text and "preferences?token=" in text
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    again = send_day(site, SUNDAY)
    assert again.sent == 0 and len(smtp_server.handler.messages) == len(got)  # exactly once


def test_status_shows_the_digests_beside_the_editions(site, smtp_server):
    send_day(site, SUNDAY)
    result = CliRunner().invoke(cli, ["--config", str(site.source), "status"], catch_exceptions=False)
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["2026-06-28", "06-28-story", "1"] for line in lines)
    assert any(line.split()[:4] == ["2026-06-28", "weekly", "digest", "1"] for line in lines)


def test_dry_run_and_outbox_show_the_digests_and_preview_renders_one(site, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["--config", str(site.source), "send", "--dry-run", "--date", "2026-06-28"]).stdout
    assert "recipients: 1 (would be sent; 0 already done)" in out and "weekly digests: 1 (would be sent)" in out
    monday = runner.invoke(cli, ["--config", str(site.source), "send", "--dry-run", "--date", "2026-06-29"]).stdout
    assert "weekly digests: 0 (would be sent)" in monday
    outbox = tmp_path / "outbox"
    runner.invoke(cli, ["--config", str(site.source), "send", "--outbox", str(outbox), "--date", "2026-06-28"])
    assert sorted(p.name for p in outbox.iterdir()) == [
        "2026-06-28_daily@example.com.eml",
        "2026-06-28_weekly@example.com.eml",
    ]
    assert "your week, June 22 to June 28" in (outbox / "2026-06-28_weekly@example.com.eml").read_text()
    preview = runner.invoke(
        cli, ["--config", str(site.source), "preview", "--digest", "--date", "2026-06-28", "--format", "text"]
    )
    assert preview.exit_code == 0 and "Story of June 22" in preview.stdout and "FUN FACT" in preview.stdout
    assert not (site.paths.state / "locks").exists()  # nothing was sent or recorded


def test_switching_to_weekly_mid_week_neither_mails_twice_nor_skips_a_story(site, smtp_server):
    for day in (22, 23, 24):  # Monday to Wednesday as a daily reader
        send_day(site, date(2026, 6, day))
    set_frequency(site, "daily@example.com", "weekly", "sunday")
    for day in (25, 26, 27, 28):
        send_day(site, date(2026, 6, day))
    got = [m for m in mail(smtp_server) if m[0] == "daily@example.com"]
    assert [m[1] for m in got] == ["edition", "edition", "edition", "digest"]
    digest = smtp_server.handler.messages[-1].message
    assert stories(digest) == (["06/25", "06/26", "06/27"], "Story of June 28")  # just what the dailies did not bring


def test_switching_on_the_weekday_after_the_daily_went_out_waits_a_week(site, smtp_server):
    send_day(site, SUNDAY)
    set_frequency(site, "daily@example.com", "weekly", "sunday")
    send_day(site, SUNDAY)  # again, the same Sunday: one message per reader per date
    assert [m[1] for m in mail(smtp_server) if m[0] == "daily@example.com"] == ["edition"]
    for offset in range(1, 8):
        send_day(site, SUNDAY + timedelta(days=offset))
    got = [m for m in mail(smtp_server) if m[0] == "daily@example.com"]
    assert [m[1] for m in got] == ["edition", "digest"]
    assert stories(smtp_server.handler.messages[-1].message)[0] == [
        "06/29",
        "06/30",
        "07/01",
        "07/02",
        "07/03",
        "07/04",
    ]


def test_switching_back_to_daily_catches_up_on_the_days_since_the_last_digest(site, smtp_server):
    send_day(site, SUNDAY)  # Wes's digest of June 22-28
    for day in (29, 30):
        send_day(site, date(2026, 6, day))  # Monday, Tuesday: nothing for him
    set_frequency(site, "weekly@example.com", "daily")
    send_day(site, date(2026, 7, 1))
    send_day(site, date(2026, 7, 2))
    got = [(m[1]) for m in mail(smtp_server) if m[0] == "weekly@example.com"]
    assert got == ["digest", "digest", "edition"]
    catch_up = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == ["weekly@example.com"]][1]
    assert stories(catch_up) == (["06/29", "06/30"], "Story of July 1")


def test_the_dry_run_counts_a_catch_up_digest_instead_of_the_daily_edition(site, smtp_server):
    send_day(site, SUNDAY)
    set_frequency(site, "weekly@example.com", "daily")
    out = CliRunner().invoke(cli, ["--config", str(site.source), "send", "--dry-run", "--date", "2026-07-01"]).stdout
    assert "recipients: 1 (would be sent; 0 already done)" in out and "weekly digests: 1 (would be sent)" in out


def test_a_digest_goes_exactly_once_across_a_kill_9_and_a_rerun(make_settings, library, tmp_path, smtp_server):
    rows = "".join(f"reader{i}@example.com,Reader {i},,weekly,sunday\n" for i in range(60))
    csv = tmp_path / "weekly.csv"
    csv.write_text("email,name,timezone,frequency,weekday\n" + rows, encoding="utf-8")
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\nconnections = 2\n'
    settings = make_settings(toml, events=library, state=tmp_path / "var", public=tmp_path / "p", subscribers=csv)
    smtp_server.handler.delay = 0.02
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = "test-secret"
    command = [sys.executable, "-m", "newsletter", "--config", str(settings.source), "send", "--date", "2026-06-28"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(smtp_server.handler.messages) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    before = len(smtp_server.handler.messages)
    assert 15 <= before < 60, "the kill must land in the middle of the send"
    smtp_server.handler.delay = 0
    send_day(settings, SUNDAY)
    received = smtp_server.handler.recipients()
    assert set(received) == {f"reader{i}@example.com" for i in range(60)}
    assert len(received) - len(set(received)) <= 2, "only messages in flight at the crash may go twice"
    ids = {}
    for message in smtp_server.handler.messages:
        ids.setdefault(message.rcpt_tos[0], set()).add(message.message["Message-ID"])
    assert all(len(found) == 1 for found in ids.values())  # a resend carries the same Message-ID
    assert all(".digest." in next(iter(found)) for found in ids.values())
    conn = storage.connect(settings)
    statuses = conn.execute("SELECT kind, status, COUNT(*) FROM deliveries GROUP BY 1, 2").fetchall()
    assert [tuple(r) for r in statuses] == [("digest", "delivered", 60)]


def test_a_digest_that_failed_temporarily_is_retried_like_an_edition(site, smtp_server):
    smtp_server.handler.reject["weekly@example.com"] = "451 4.3.0 try again later"
    result = send_day(site, SUNDAY)
    assert result.failed == 1 and not result.complete
    del smtp_server.handler.reject["weekly@example.com"]
    retried = send_day(site, SUNDAY, retry_failed=True)
    assert retried.delivered == 1 and retried.complete
    assert [m[:2] for m in mail(smtp_server) if m[0] == "weekly@example.com"] == [("weekly@example.com", "digest")]
