"""The command line: thin commands, one-line errors, help for every command."""

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from tests.conftest import event_text, write_event


@pytest.fixture
def run(settings, tmp_path, monkeypatch):
    """Invoke the CLI in-process with the test configuration; returns (exit code, stdout, stderr)."""

    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")

    def invoke(*args: str):
        result = CliRunner().invoke(cli, ["--config", str(tmp_path / "newsletter.toml"), *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize(
    ("path", "command"), list(all_commands(cli)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_command_has_help_text(path, command):
    assert command.help, f"'newsletter {' '.join(path)}' has no help text"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    *_, heading, example = result.output.rstrip().splitlines()
    assert heading.strip() == "Example:", f"add an example for '{' '.join(path)}' to EXAMPLES in newsletter/cli.py"
    assert example.strip().startswith("newsletter ") and " ".join(path) in example


def test_the_main_help_ends_with_an_example():
    *_, heading, example = CliRunner().invoke(cli, ["--help"]).output.rstrip().splitlines()
    assert heading.strip() == "Example:" and example.strip().startswith("newsletter ")


def test_send_dry_run_names_the_date_event_and_subject(run):
    code, out, _ = run("send", "--dry-run", "--date", "2026-06-24")
    assert code == 0
    assert "date: 2026-06-24" in out
    assert "event: A June 24 event (1995)" in out
    assert "subject: June 24: A June 24 event" in out


def test_dry_run_changes_no_state(run, tmp_path):
    run("send", "--dry-run", "--date", "2026-06-24")
    assert not (tmp_path / "var").exists()


def test_events_check_passes_on_a_good_library(run):
    code, out, _ = run("events", "check")
    assert code == 0
    assert out.splitlines()[-2:] == [
        "5 events, 0 errors, 1 warnings",
        "coverage: 4/366 days, 365 with fewer than two articles",
    ]


def test_events_check_prints_the_subject_era_and_region_tables(run):
    out = run("events", "check")[1].splitlines()
    assert out.index("subjects:") < out.index("eras:") < out.index("regions:")
    assert "  politics          4   80.0%" in out and "wars and battles: 1 of 5 (20.0%)" in out
    assert "  20th century      4   80.0%" in out and "  ancient           0    0.0%" in out
    assert "  unset             5  100.0%" in out


def test_events_check_strict_fails_while_a_day_has_fewer_than_two_articles(run, event_folder):
    assert run("events", "check")[0] == 0
    code, out, _ = run("events", "check", "--strict")
    assert code == 1
    assert f"{event_folder}: warning: 365 days have fewer than two articles: January 1," in out


def test_events_check_reports_one_line_per_problem_and_fails(run, event_folder):
    first = "On July 2, 2012, officers defected to Turkey. " * 10
    bad = write_event(event_folder, "06-26-bad.md", event_text("Bad", "2012-06-26", first=first))
    code, out, _ = run("events", "check")
    assert code == 1
    assert f"{bad}:18: error: the first section dates the event 'July 2, 2012' but its date is 2012-06-26" in out
    assert "coverage: 4/366 days" in out


def test_events_check_strict_fails_on_warnings(run, event_folder):
    write_event(event_folder, "06-27-short.md", event_text("Short", "2001-06-27", sections=2))
    assert run("events", "check")[0] == 0
    assert run("events", "check", "--strict")[0] == 1


def test_no_event_for_the_date_is_one_line_error(run):
    code, _, err = run("send", "--dry-run", "--date", "2026-03-03")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("Error: no event for March 3 (2026-03-03)")


def test_config_command_prints_the_effective_settings(run):
    code, out, _ = run("config")
    assert code == 0 and "[smtp]" in out and "NEWSLETTER_SECRET = ********" in out


def subprocess_newsletter(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_bad_date_is_one_line_without_traceback(tmp_path):
    result = subprocess_newsletter("send", "--dry-run", "--date", "2026-02-30", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "Error: Invalid value for '--date': '2026-02-30' is impossible: February 2026 has 28 days\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2028-02-30", "'2028-02-30' is impossible: February 2028 has 29 days"),
        ("2026-04-31", "'2026-04-31' is impossible: April 2026 has 30 days"),
        ("2026-13-01", "'2026-13-01' is impossible: there is no month 13"),
        ("0000-01-01", "'0000-01-01' is impossible: there is no year 0"),
        ("25/06/2026", "'25/06/2026' is not a date in the form YYYY-MM-DD"),
        ("2026-6-25", "'2026-6-25' is not a date in the form YYYY-MM-DD"),
    ],
)
def test_a_date_that_cannot_be_is_called_impossible(run, text, message):
    code, _, err = run("send", "--dry-run", "--date", text)
    assert code == 2 and err.strip().endswith(message)


def test_bad_config_is_one_line_without_traceback(tmp_path):
    (tmp_path / "newsletter.toml").write_text('[newsletter]\ntimezone = "Nowhere/City"\n')
    result = subprocess_newsletter("send", "--dry-run", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "'newsletter.timezone' is not an IANA time zone" in result.stderr


def test_verbose_shows_our_debug_details_but_not_the_libraries_chatter(settings, tmp_path):
    config = str(tmp_path / "newsletter.toml")
    env = {**os.environ, "NEWSLETTER_SECRET": "test-secret"}
    result = subprocess_newsletter("--config", config, "-v", "send", "--dry-run", "--date", "2026-06-25", env=env)
    assert result.returncode == 0, result.stderr
    assert "markdown_it" not in result.stderr  # it logs every block rule it tries at DEBUG
    code = (
        "import logging; from newsletter import logs; logs.setup(True); "
        "print(logging.getLogger('newsletter.sending').isEnabledFor(logging.DEBUG), "
        "logging.getLogger('markdown_it').isEnabledFor(logging.DEBUG))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["True", "False"]


def test_help_loads_neither_premailer_nor_requests():
    """A quick start: a command imports only what it uses (premailer and requests cost ~150 ms)."""
    code = (
        "import sys; from click.testing import CliRunner; from newsletter.cli import cli; "
        "CliRunner().invoke(cli, ['--help']); CliRunner().invoke(cli, ['send', '--help']); "
        "print(sorted(m for m in ('premailer', 'requests', 'cssutils', 'smtplib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_send_warns_when_the_postal_address_is_empty(run):
    code, _, err = run("send", "--dry-run", "--date", "2026-06-24")
    assert code == 0
    assert "warning: newsletter.postal_address is empty, so the email footer has no postal address" in err


def test_send_does_not_warn_when_the_postal_address_is_set(make_settings, event_folder, tmp_path, monkeypatch):
    make_settings('[newsletter]\npostal_address = "1 Main Street, Springfield"\n', events=event_folder)
    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")
    config = ["--config", str(tmp_path / "newsletter.toml")]
    result = CliRunner().invoke(cli, [*config, "send", "--dry-run", "--date", "2026-06-24"], catch_exceptions=False)
    assert result.exit_code == 0 and "postal_address" not in result.stderr
