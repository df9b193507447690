"""Bounce import: RFC 3464 reports built with the email package, matched by Message-ID or recipient."""

from datetime import date
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from newsletter import state
from newsletter.bounces import import_bounce
from newsletter.ledger import DatabaseLedger
from newsletter.storage import sqlite
from newsletter.subscribers import Subscriber


def dsn(path, recipient, status, action="failed", message_id="<x@example.org>", more=()):
    report = MIMEMultipart("report", report_type="delivery-status")
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.attach(MIMEText("This is the mail system. Your message could not be delivered."))
    status_part = MIMEBase("message", "delivery-status")
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; {status[0]}50 {status} mailbox unavailable"
    groups = [per_message, per_recipient]
    for other, other_status, other_action in more:  # further recipients of the same report
        group = Message()
        group["Final-Recipient"] = f"rfc822; {other}"
        group["Action"] = other_action
        group["Status"] = other_status
        groups.append(group)
    status_part.set_payload(groups)
    report.attach(status_part)
    original = EmailMessage()
    original["Message-ID"] = message_id
    original["To"] = recipient
    headers = MIMEText(original.as_string(), "rfc822-headers")
    report.attach(headers)
    path.write_bytes(report.as_bytes())
    return path


@pytest.fixture
def conn(tmp_path):
    conn = sqlite.connect(tmp_path / "var")
    ledger = DatabaseLedger(conn)
    ledger.plan(date(2026, 6, 25), [Subscriber("ada@example.com", "Ada")], lambda s: "<20260625.abc@example.org>")
    ledger.mark_delivered(date(2026, 6, 25), "ada@example.com", "250 ok")
    return conn


def test_a_permanent_failure_found_by_message_id_is_suppressed(tmp_path, conn):
    path = dsn(tmp_path / "b.eml", "someone-else@example.net", "5.1.1", message_id="<20260625.abc@example.org>")
    [report] = import_bounce(path, conn)
    assert (report.action, report.address) == ("suppressed", "ada@example.com")
    assert state.suppressed(conn) == {"ada@example.com": "bounced"}
    assert DatabaseLedger(conn).counts(date(2026, 6, 25))["bounced"] == 1


def test_a_permanent_failure_found_by_recipient_is_suppressed(tmp_path, conn):
    [report] = import_bounce(dsn(tmp_path / "b.eml", "bob@example.com", "5.2.1"), conn)
    assert (report.action, report.address) == ("suppressed", "bob@example.com")
    assert "bob@example.com" in state.suppressed(conn)


def test_a_temporary_failure_is_reported_not_suppressed(tmp_path, conn):
    [report] = import_bounce(dsn(tmp_path / "b.eml", "carol@example.com", "4.2.2", action="delayed"), conn)
    assert report.action == "temporary"
    assert state.suppressed(conn) == {}


def test_a_message_that_is_not_a_report_is_ignored(tmp_path, conn):
    path = tmp_path / "plain.eml"
    path.write_bytes(b"Subject: hello\r\n\r\nout of office\r\n")
    [report] = import_bounce(path, conn)
    assert report.action == "ignored" and "not a delivery status notification" in str(report)
    assert state.suppressed(conn) == {}


def test_every_recipient_of_a_report_is_handled_and_deliveries_are_not_failures(tmp_path, conn):
    more = [("Dan@Example.com", "5.1.1", "failed"), ("erin@example.com", "2.0.0", "delivered")]
    reports = import_bounce(dsn(tmp_path / "b.eml", "carol@example.com", "5.2.2", more=more), conn)
    assert [(r.action, r.address) for r in reports] == [
        ("suppressed", "carol@example.com"),
        ("suppressed", "dan@example.com"),
        ("ignored", "erin@example.com"),
    ]
    assert state.suppressed(conn) == {"carol@example.com": "bounced", "dan@example.com": "bounced"}


def test_the_import_command_prints_one_line_per_recipient_and_a_summary(settings, tmp_path):
    from click.testing import CliRunner

    from newsletter.cli import cli

    good = dsn(tmp_path / "a.eml", "frank@example.com", "5.1.1")
    missing = tmp_path / "missing.eml"
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "newsletter.toml"), "bounces", "import", str(good)])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"{good}: suppressed frank@example.com: permanent failure 5.1.1",
        "1 message: 1 suppressed",
    ]
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "newsletter.toml"), "bounces", "import", str(good), str(missing)]
    )
    assert result.exit_code == 1 and result.stdout.splitlines()[-1] == "2 messages: 0 suppressed; 1 already handled"
    assert f"{missing}: error: cannot read" in result.stdout
