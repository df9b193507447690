"""The list of record from the command line: add, remove, resubscribe, import, list, export, check, suppressions.

Every command runs against a real SQLite state database in tmp_path.
"""

import json
import os
from dataclasses import astuple

import pytest
from click.testing import CliRunner

from newsletter import state
from newsletter.cli import cli
from newsletter.storage import sqlite
from newsletter.subscribers import Tally, iter_recipients, sync_csv


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "subscribers.csv"
    path.write_text("email,name,timezone\nada@example.com,Ada,Europe/London\nbob@example.org,Bob,\n", encoding="utf-8")
    return path


@pytest.fixture
def run(make_settings, event_folder, tmp_path, csv_file):
    """Invoke the CLI in-process; returns (exit code, stdout, stderr)."""
    make_settings(events=event_folder, state=tmp_path / "var", public=tmp_path / "public", subscribers=csv_file)

    def invoke(*args: str):
        result = CliRunner().invoke(cli, ["--config", str(tmp_path / "newsletter.toml"), *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def listed(run, *options):
    code, out, _ = run("subscribers", "list", "--format", "json", *options)
    assert code == 0
    return {row["email"]: row for row in json.loads(out)}


def test_add_then_list_shows_the_subscriber_with_its_choices(run):
    code, out, _ = run("subscribers", "add", "Grace@Example.net", "--name", "Grace", "--timezone", "America/New_York")
    assert (code, out) == (0, "added Grace@example.net (daily)\n")
    row = listed(run)["Grace@example.net"]
    assert (row["name"], row["timezone"], row["frequency"], row["status"], row["source"]) == (
        "Grace", "America/New_York", "daily", "active", "cli",
    )  # fmt: skip


def test_adding_twice_or_bad_input_is_a_one_line_error(run):
    run("subscribers", "add", "grace@example.net")
    code, _, err = run("subscribers", "add", "GRACE@example.net")
    assert code == 1 and err == "Error: GRACE@example.net is already on the list (active, from cli)\n"
    code, _, err = run("subscribers", "add", "not-an-address")
    assert code == 1 and err.startswith("Error: 'not-an-address' is not a valid email address")
    code, _, err = run("subscribers", "add", "zed@example.net", "--timezone", "Mars/Base")
    assert code == 1 and "time zone" in err and err.count("\n") == 1


def test_remove_unsubscribes_and_keeps_the_record(run):
    run("subscribers", "add", "grace@example.net", "--frequency", "weekly", "--weekday", "Friday")
    assert run("subscribers", "remove", "grace@example.net")[1] == "unsubscribed grace@example.net\n"
    assert run("subscribers", "remove", "grace@example.net")[1] == "grace@example.net was already suppressed\n"
    row = listed(run)["grace@example.net"]
    assert (row["status"], row["frequency"], row["weekday"]) == ("unsubscribed", "weekly", "friday")
    assert list(listed(run, "--status", "unsubscribed")) == ["grace@example.net"]
    assert "grace@example.net" not in listed(run, "--status", "active")


def test_resubscribe_lifts_an_unsubscribe_but_a_bounce_only_with_force(run, tmp_path):
    run("subscribers", "add", "grace@example.net")
    run("subscribers", "remove", "grace@example.net")
    assert (
        run("subscribers", "resubscribe", "grace@example.net")[1]
        == "resubscribed grace@example.net (was unsubscribed)\n"
    )
    assert run("subscribers", "resubscribe", "grace@example.net")[1] == "grace@example.net is already active\n"
    conn = sqlite.connect(tmp_path / "var")
    state.suppress(conn, "grace@example.net", "bounced", "550 5.1.1 no such user")
    code, _, err = run("subscribers", "resubscribe", "grace@example.net")
    assert code == 1 and "suppressed as bounced (550 5.1.1 no such user)" in err and "--force" in err
    assert run("subscribers", "resubscribe", "grace@example.net", "--force")[0] == 0
    assert listed(run)["grace@example.net"]["status"] == "active"
    code, _, err = run("subscribers", "resubscribe", "nobody@example.net")
    assert code == 1 and "not on the list" in err


def test_suppressions_list_and_remove(run, tmp_path):
    conn = sqlite.connect(tmp_path / "var")
    state.suppress(conn, "ada@example.com", "bounced", "550 gone")
    state.suppress(conn, "eve@example.com", "complained", "abuse report")
    code, out, _ = run("suppressions", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["email", "reason", "since", "detail"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["ada@example.com", "bounced"],
        ["eve@example.com", "complained"],
    ]
    assert (
        run("suppressions", "remove", "ADA@example.com")[1]
        == "lifted the suppression of ada@example.com (was bounced)\n"
    )
    code, _, err = run("suppressions", "remove", "ada@example.com")
    assert code == 1 and err == "Error: ada@example.com is not on the suppression list\n"
    assert set(state.suppressed(conn)) == {"eve@example.com"}


def test_import_reports_bad_rows_with_their_line_imports_the_rest_and_twice_changes_nothing(run, tmp_path):
    path = tmp_path / "more.csv"
    path.write_text(
        "email,name,timezone,frequency,weekday\n"
        "carol@example.com,Carol,Asia/Tokyo,weekly,sunday\n"
        "bad-address,Bad,,,\n"
        "dan@example.com,Dan,Mars/Base,,\n"
        "erin@example.com,Erin,,hourly,\n"
        "fay@example.com,Fay,,weekly,someday\n"
        "gus@example.com,Gus,,,\n"
        "GUS@example.com,Gus again,,,\n",
        encoding="utf-8",
    )
    code, out, err = run("subscribers", "import", str(path))
    assert code == 1
    problems = err.splitlines()
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert problems[1] == f"{path}:4: unknown time zone 'Mars/Base' for dan@example.com; row skipped"
    assert problems[2] == f"{path}:5: frequency 'hourly' for erin@example.com is not daily or weekly; row skipped"
    assert out == f"{path}: 2 added, 0 already on the list, 4 bad rows skipped, 1 duplicates\n"
    before = listed(run)
    assert before["carol@example.com"]["frequency"] == "weekly" and before["carol@example.com"]["weekday"] == "sunday"
    assert before["gus@example.com"]["source"] == "import"
    code, out, _ = run("subscribers", "import", str(path))
    assert out == f"{path}: 0 added, 2 already on the list, 4 bad rows skipped, 1 duplicates\n"
    assert listed(run) == before


def test_the_csv_file_is_synced_into_the_list_with_source_csv(run, csv_file, tmp_path):
    rows = listed(run)
    assert {e: r["source"] for e, r in rows.items()} == {"ada@example.com": "csv", "bob@example.org": "csv"}
    conn = sqlite.connect(tmp_path / "var")
    public_id = state.find_subscriber(conn, "bob@example.org")["public_id"]
    # the reader changes her own preferences: from then on the file no longer changes her row
    state.update_preferences(
        conn, "ada@example.com", name="Ada L.", timezone="Asia/Tokyo", frequency="weekly", weekday="friday"
    )
    csv_file.write_text(
        "email,name,timezone\nada@example.com,Ada,Europe/Paris\nbob@example.org,Robert,\ncy@example.net,Cy,\n",
        encoding="utf-8",
    )
    rows = listed(run)
    assert (rows["ada@example.com"]["name"], rows["ada@example.com"]["timezone"]) == ("Ada L.", "Asia/Tokyo")
    assert rows["bob@example.org"]["name"] == "Robert"  # the file still rules an unedited row
    assert set(rows) == {"ada@example.com", "bob@example.org", "cy@example.net"}
    assert state.find_subscriber(conn, "bob@example.org")["public_id"] == public_id  # stable across syncs
    # a row removed from the file leaves the list; an unsubscribe stays on the suppression list
    run("subscribers", "remove", "bob@example.org")
    csv_file.write_text("email,name,timezone\nada@example.com,Ada,\n", encoding="utf-8")
    assert set(listed(run)) == {"ada@example.com"}
    assert state.suppressed(conn) == {"bob@example.org": "unsubscribed"}


def test_public_ids_are_random_url_safe_and_never_change(run, tmp_path, csv_file):
    first = {e: r for e, r in ((e, state.find_subscriber(sqlite.connect(tmp_path / "var"), e)) for e in listed(run))}
    ids = {e: row["public_id"] for e, row in first.items()}
    assert all(len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids.values())
    os.utime(csv_file, ns=(1, 1))  # the file looks changed: synced again
    listed(run)
    conn = sqlite.connect(tmp_path / "var")
    assert {e: state.find_subscriber(conn, e)["public_id"] for e in ids} == ids
    assert state.find_subscriber_by_public_id(conn, ids["ada@example.com"])["email"] == "ada@example.com"


def test_a_dry_run_sees_the_list_exactly_as_the_sync_writes_it(tmp_path, csv_file):
    conn = sqlite.connect(tmp_path / "var")
    state.add_subscriber(conn, "web@example.net", name="Web", source="web")
    state.add_subscriber(conn, "ada@example.com", name="Ada Web", timezone="Asia/Tokyo", source="web")
    sync_csv(csv_file, conn, Tally())
    csv_file.write_text(
        "email,name,timezone\nada@example.com,Ada,\nbob@example.org,Robert,Europe/Rome\nnew@example.org,N,\n"
    )

    def values(subscriber):  # what the reader set; a row new in the file gets its public id at the sync
        return astuple(subscriber)[:5]

    before = sorted(map(values, iter_recipients(csv_file, conn, Tally(), None)))  # computed, nothing written
    sync_csv(csv_file, conn, Tally())
    after = sorted(map(values, iter_recipients(csv_file, conn, Tally(), None)))
    from newsletter.subscribers import entries

    table = sorted(values(e.subscriber) for e in entries(conn, "active"))
    assert before == after == table


def test_check_counts_the_file_and_the_list_apart_and_changes_nothing(run, csv_file, tmp_path):
    run("subscribers", "add", "web@example.net", "--frequency", "weekly")
    csv_file.write_text("email,name,timezone\nada@example.com,Ada,\nbroken,,\n", encoding="utf-8")
    code, out, _ = run("subscribers", "check")
    assert code == 1
    assert out.splitlines() == [
        f"{csv_file}:3: invalid email 'broken': An email address must have an @-sign.; row skipped",
        f"{csv_file}: 2 rows, 1 bad",
        "list: 2 to mail (1 daily, 1 weekly); skipped 1: 1 invalid, 0 duplicate, 0 suppressed",
    ]
    assert state.find_subscriber(sqlite.connect(tmp_path / "var"), "ada@example.com") is None  # not synced by a check


def test_export_writes_everyone_mailed_ready_for_import(run, tmp_path):
    run("subscribers", "add", "web@example.net", "--name", "Web", "--frequency", "weekly", "--weekday", "sunday")
    run("subscribers", "remove", "bob@example.org")
    code, out, _ = run("subscribers", "export")
    assert code == 0 and out.splitlines() == [
        "email,name,timezone,frequency,weekday",
        "ada@example.com,Ada,Europe/London,daily,monday",
        "web@example.net,Web,,weekly,sunday",
    ]


def test_status_counts_subscribers_by_status_and_frequency(run, tmp_path):
    run("subscribers", "add", "web@example.net", "--frequency", "weekly")
    run("subscribers", "add", "gone@example.net", "--frequency", "weekly")
    run("subscribers", "remove", "gone@example.net")
    code, out, _ = run("status")
    assert code == 0
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert table["subscribers"] == ["daily", "weekly", "total"]
    assert table["active"] == ["2", "1", "3"]  # the two CSV rows and one weekly reader
    assert table["unsubscribed"] == ["0", "1", "1"]
    assert table["bounced"] == ["0", "0", "0"] and table["complained"] == ["0", "0", "0"]


def test_a_send_syncs_the_csv_file_into_the_list(
    settings, tmp_path, csv_file, smtp_server, make_settings, event_folder
):
    from datetime import date

    from newsletter.editions import send_day

    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
    settings = make_settings(
        toml, events=event_folder, state=tmp_path / "var", public=tmp_path / "p", subscribers=csv_file
    )
    result = send_day(settings, date(2026, 6, 24))
    assert result.delivered == 2
    conn = sqlite.connect(tmp_path / "var")
    assert state.find_subscriber(conn, "ada@example.com")["source"] == "csv"


def test_set_changes_what_a_reader_can_change_on_the_web(run, tmp_path):
    code, out, _ = run("subscribers", "set", "ada@example.com", "--frequency", "weekly", "--weekday", "Sunday")
    assert (code, out) == (0, "ada@example.com: weekly on sunday, zone Europe/London, name Ada\n")
    row = listed(run)["ada@example.com"]
    assert (row["frequency"], row["weekday"], row["source"]) == ("weekly", "sunday", "csv")
    code, _, err = run("subscribers", "set", "ada@example.com", "--timezone", "Mars/Base")
    assert code == 1 and "time zone" in err
    code, _, err = run("subscribers", "set", "nobody@example.com", "--name", "X")
    assert code == 1 and "not on the list" in err
