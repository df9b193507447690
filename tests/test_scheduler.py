"""The daily job: each reader's own morning, catch-up but never stale, DST, restarts, the daemon."""

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from newsletter import state, storage
from newsletter.scheduler import Daily, plan, send_moment, zone_state
from newsletter.subscribers import Subscriber

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
SIX_HOURS = timedelta(hours=6)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


# Pure decisions.


def test_send_moment_on_ordinary_days():
    assert send_moment(date(2026, 6, 25), "07:00", BERLIN) == datetime(2026, 6, 25, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "zone", "send_time", "expected_utc"),
    [
        (date(2026, 3, 29), BERLIN, "02:30", utc(2026, 3, 29, 1, 30)),  # skipped hour: 03:30 CEST
        (date(2026, 10, 25), BERLIN, "02:30", utc(2026, 10, 25, 0, 30)),  # repeated hour: the first 02:30 (CEST)
        (date(2026, 3, 8), NEW_YORK, "02:30", utc(2026, 3, 8, 7, 30)),  # skipped hour: 03:30 EDT
        (date(2026, 11, 1), NEW_YORK, "01:30", utc(2026, 11, 1, 5, 30)),  # repeated hour: the first 01:30 (EDT)
    ],
)
def test_send_moment_on_dst_days_is_exactly_one_instant(day, zone, send_time, expected_utc):
    moment = send_moment(day, send_time, zone)
    assert moment.timestamp() == expected_utc.timestamp()  # == across zones is False for a repeated hour (PEP 495)
    assert moment.astimezone(zone).date() == day


def test_zone_state_early_due_stale():
    assert zone_state(utc(2026, 6, 25, 4, 59), "Europe/Berlin", "07:00", SIX_HOURS).status == "early"
    assert zone_state(utc(2026, 6, 25, 5, 0), "Europe/Berlin", "07:00", SIX_HOURS).status == "due"
    assert zone_state(utc(2026, 6, 25, 11, 0), "Europe/Berlin", "07:00", SIX_HOURS).status == "due"
    assert zone_state(utc(2026, 6, 25, 11, 1), "Europe/Berlin", "07:00", SIX_HOURS).status == "stale"
    with pytest.raises(ValueError):
        zone_state(datetime(2026, 6, 25, 5, 0), "UTC", "07:00", SIX_HOURS)


def test_plan_groups_readers_by_their_local_date(settings):
    readers = [
        Subscriber("a@example.com", "", "Europe/London"),  # 08:30 BST: due, June 25
        Subscriber("b@example.com", "", "America/New_York"),  # 03:30 EDT: early
        Subscriber("c@example.com", "", "Pacific/Auckland"),  # 19:30 NZST: stale
        Subscriber("d@example.com", "", ""),  # the newsletter's zone, UTC: 07:30, due
        Subscriber("e@example.com", "", "Pacific/Kiritimati"),  # UTC+14: already 21:30 on June 25: stale
    ]
    found = plan(utc(2026, 6, 25, 7, 30), readers, settings)
    assert found.due == {date(2026, 6, 25): {"Europe/London", "UTC"}}
    assert found.stale == {date(2026, 6, 25): {"Pacific/Auckland", "Pacific/Kiritimati"}}


# The job against a real SMTP server.


@pytest.fixture
def daily(make_settings, event_folder, tmp_path, smtp_server):
    csv = tmp_path / "subscribers.csv"
    csv.write_text(
        "email,name,timezone\n"
        "london@example.com,London,Europe/London\n"
        "newyork@example.com,New York,America/New_York\n"
        "auckland@example.com,Auckland,Pacific/Auckland\n"
        "utc@example.com,Default,\n",
        encoding="utf-8",
    )
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\nretry_delay = 0.01\n'
    settings = make_settings(
        toml, events=event_folder, state=tmp_path / "var", public=tmp_path / "public", subscribers=csv
    )
    return Daily(settings)


def received(smtp_server):
    return sorted((m.rcpt_tos[0], m.message["Subject"][:7]) for m in smtp_server.handler.messages)


def test_each_reader_gets_the_edition_of_their_local_date_at_their_morning(daily, smtp_server):
    daily.beat(utc(2026, 6, 24, 19, 30))  # 07:30 June 25 in Auckland
    assert received(smtp_server) == [("auckland@example.com", "June 25")]
    daily.beat(utc(2026, 6, 25, 6, 30))  # 07:30 in London; 06:30 UTC is still early
    assert received(smtp_server)[-1:] == [("london@example.com", "June 25")] and len(received(smtp_server)) == 2
    daily.beat(utc(2026, 6, 25, 7, 5))  # UTC readers
    daily.beat(utc(2026, 6, 25, 11, 5))  # 07:05 EDT in New York
    assert received(smtp_server) == [
        ("auckland@example.com", "June 25"),
        ("london@example.com", "June 25"),
        ("newyork@example.com", "June 25"),
        ("utc@example.com", "June 25"),
    ]


def test_never_before_send_time_and_never_twice(daily, smtp_server):
    daily.beat(utc(2026, 6, 25, 6, 59))
    assert ("utc@example.com", "June 25") not in received(smtp_server)
    for minute in (0, 1, 30):
        daily.beat(utc(2026, 6, 25, 7, minute))
    assert received(smtp_server).count(("utc@example.com", "June 25")) == 1


def test_a_restart_in_the_middle_of_the_day_repeats_nothing(daily, smtp_server):
    daily.beat(utc(2026, 6, 25, 7, 10))
    before = len(smtp_server.handler.messages)
    restarted = Daily(daily.settings)  # a new process: nothing in memory
    restarted.beat(utc(2026, 6, 25, 7, 20))
    assert len(smtp_server.handler.messages) == before


def test_catch_up_within_the_window_but_never_stale(daily, smtp_server, caplog):
    daily.beat(utc(2026, 6, 25, 12, 59))  # UTC readers: 5 h 59 after send_time: caught up
    assert ("utc@example.com", "June 25") in received(smtp_server)
    smtp_server.handler.messages.clear()
    late = Daily(daily.settings)
    with caplog.at_level("WARNING"):
        late.beat(utc(2026, 6, 24, 13, 1))  # June 24 for UTC readers, 6 h 01 late: skipped
    assert ("utc@example.com", "June 24") not in received(smtp_server)
    assert "1 reader in UTC did not get the 2026-06-24 edition within 6 hours of send_time" in caplog.text


def stale_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "did not get" in r.getMessage()]


def test_stale_warnings_speak_only_of_readers_not_yet_mailed_once_per_edition_and_zone(daily, smtp_server, caplog):
    conn = storage.connect(daily.settings)  # a weekly reader is not missed on the other six days
    state.add_subscriber(
        conn, "weekly@example.com", timezone="Asia/Tokyo", frequency="weekly", weekday="friday", source="cli"
    )
    with caplog.at_level("WARNING"):
        Daily(daily.settings).beat(utc(2026, 6, 25, 7, 5))  # London and UTC readers mailed; Auckland's window is over
        assert stale_warnings(caplog) == [
            "1 reader in Pacific/Auckland did not get the 2026-06-25 edition within 6 hours of send_time; "
            "it is skipped for them rather than mailed as stale news"
        ]
        for minute in range(0, 60, 10):  # cron: a new process every ten minutes, long after London's and UTC's window
            Daily(daily.settings).beat(utc(2026, 6, 25, 13, minute))
    assert len(stale_warnings(caplog)) == 1  # London and UTC were mailed: no warning; Auckland's is not repeated
    assert ("newyork@example.com", "June 25") in received(smtp_server)


def test_dst_days_send_exactly_once(make_settings, event_folder, tmp_path, smtp_server):
    csv = tmp_path / "dst.csv"
    csv.write_text("email,name,timezone\nberlin@example.com,B,Europe/Berlin\nny@example.com,N,America/New_York\n")
    write = tmp_path / "events2"
    import shutil

    shutil.copytree(event_folder, write)
    from tests.conftest import event_text, write_event

    for name, when in (
        ("03-29-spring.md", "1990-03-29"),
        ("10-25-autumn.md", "1990-10-25"),
        ("03-08-spring.md", "1990-03-08"),
        ("11-01-autumn.md", "1990-11-01"),
    ):
        write_event(write, name, event_text(f"Event {name}", when))
    toml = (
        f'[newsletter]\nsend_time = "02:30"\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
    )
    daily = Daily(make_settings(toml, events=write, state=tmp_path / "v", public=tmp_path / "p", subscribers=csv))
    # Berlin, spring forward: 02:30 does not exist; the edition goes at 03:30 CEST (01:30 UTC), once.
    for instant in (utc(2026, 3, 29, 1, 29), utc(2026, 3, 29, 1, 31), utc(2026, 3, 29, 2, 0), utc(2026, 3, 29, 3, 0)):
        daily.beat(instant)
    # Berlin, fall back: 02:30 happens twice; the first one counts, the second sends nothing more.
    for instant in (utc(2026, 10, 25, 0, 31), utc(2026, 10, 25, 1, 31)):
        daily.beat(instant)
    # New York, spring forward and fall back.
    for instant in (utc(2026, 3, 8, 7, 29), utc(2026, 3, 8, 7, 31), utc(2026, 3, 8, 8, 31)):
        daily.beat(instant)
    for instant in (utc(2026, 11, 1, 6, 31), utc(2026, 11, 1, 7, 31)):
        daily.beat(instant)
    got = [(m.rcpt_tos[0], m.message["Subject"].split(":")[0]) for m in smtp_server.handler.messages]
    assert len(got) == len(set(got)), "a reader got one local date twice"
    for pair in (
        ("berlin@example.com", "March 29"),
        ("berlin@example.com", "October 25"),
        ("ny@example.com", "March 8"),
        ("ny@example.com", "November 1"),
    ):
        assert got.count(pair) == 1


def test_a_failure_in_one_beat_is_logged_and_retried_at_the_next(daily, smtp_server, caplog):
    smtp_server.handler.replies = ["451 down for maintenance"] * 10  # two readers due, five attempts each
    with caplog.at_level("WARNING"):
        first = daily.beat(utc(2026, 6, 25, 7, 1))
    assert not first.ok
    second = daily.beat(utc(2026, 6, 25, 7, 2))
    assert ("utc@example.com", "June 25") in received(smtp_server) and second.ok


def test_the_job_publishes_the_feeds(daily, smtp_server):
    daily.beat(utc(2026, 6, 25, 7, 1))
    assert (daily.settings.paths.public / "2026" / "06" / "25" / "index.html").is_file()
    assert state.recorded_editions(storage.connect(daily.settings))[date(2026, 6, 25)]


# The command, as a process.


def run(tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_SECRET": "s", **(env_extra or {})})
    return [sys.executable, "-m", "newsletter", "--config", str(tmp_path / "newsletter.toml"), "run", *args], env


def test_run_once_twice_sends_nothing_the_second_time(daily, smtp_server, tmp_path):
    command, env = run(tmp_path, "--once", "--now", "2026-06-25T07:01:00+00:00")
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    count = len(smtp_server.handler.messages)
    assert ("utc@example.com", "June 25") in received(smtp_server)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and len(smtp_server.handler.messages) == count


def test_a_reader_in_auckland_can_open_view_in_your_browser_at_their_breakfast(daily, smtp_server, tmp_path):
    """08:00 on June 25 in Auckland is 20:00 on June 24 in UTC, the newsletter's zone: the page is out anyway."""
    command, env = run(tmp_path, "--once", "--now", "2026-06-24T20:00:00+00:00")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [message] = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == ["auckland@example.com"]]
    assert message["Subject"].startswith("June 25")
    html = message.get_body(("html",)).get_content()
    url = re.search(r'<a [^>]*href="([^"]+)"[^>]*>View in your browser</a>', html).group(1)
    base = daily.settings.newsletter.base_url
    assert url == base + "2026/06/25/"
    assert (daily.settings.paths.public / url.removeprefix(base) / "index.html").is_file()
    assert "2026-06-25" not in (daily.settings.paths.public / "atom.xml").read_text()  # the feed waits for UTC


def test_the_daemon_sends_then_stops_cleanly_on_sigterm(daily, smtp_server, tmp_path):
    command, env = run(tmp_path, "--heartbeat", "0.2", "--now", "2026-06-25T07:01:00+00:00")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while ("utc@example.com", "June 25") not in received(smtp_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("utc@example.com", "June 25") in received(smtp_server)
    time.sleep(0.5)  # a few more beats: nothing is sent twice
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert received(smtp_server).count(("utc@example.com", "June 25")) == 1
    assert "started" in stderr and "received SIGTERM" in stderr
