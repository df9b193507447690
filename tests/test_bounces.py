"""Bounce import: RFC 3464 reports built with the email package, matched by Message-ID or recipient."""

from datetime import date
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from newsletter import state
from newsletter.bounces import import_bounce
from newsletter.ledger import SQLiteLedger
from newsletter.subscribers import Subscriber


def dsn(path, recipient, status, action="failed", message_id="<x@example.org>"):
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
    status_part.set_payload([per_message, per_recipient])
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
    conn = state.connect(tmp_path / "var")
    ledger = SQLiteLedger(conn)
    ledger.plan(date(2026, 6, 25), [Subscriber("ada@example.com", "Ada")], lambda s: "<20260625.abc@example.org>")
    ledger.mark_delivered(date(2026, 6, 25), "ada@example.com", "250 ok")
    return conn


def test_a_permanent_failure_found_by_message_id_is_suppressed(tmp_path, conn):
    path = dsn(tmp_path / "b.eml", "someone-else@example.net", "5.1.1", message_id="<20260625.abc@example.org>")
    report = import_bounce(path, conn)
    assert (report.action, report.address) == ("suppressed", "ada@example.com")
    assert state.suppressed(conn) == {"ada@example.com": "bounced"}
    assert SQLiteLedger(conn).counts(date(2026, 6, 25))["bounced"] == 1


def test_a_permanent_failure_found_by_recipient_is_suppressed(tmp_path, conn):
    report = import_bounce(dsn(tmp_path / "b.eml", "bob@example.com", "5.2.1"), conn)
    assert (report.action, report.address) == ("suppressed", "bob@example.com")
    assert "bob@example.com" in state.suppressed(conn)


def test_a_temporary_failure_is_reported_not_suppressed(tmp_path, conn):
    report = import_bounce(dsn(tmp_path / "b.eml", "carol@example.com", "4.2.2", action="delayed"), conn)
    assert report.action == "temporary"
    assert state.suppressed(conn) == {}


def test_a_message_that_is_not_a_report_is_ignored(tmp_path, conn):
    path = tmp_path / "plain.eml"
    path.write_bytes(b"Subject: hello\r\n\r\nout of office\r\n")
    report = import_bounce(path, conn)
    assert report.action == "ignored" and "not a delivery status notification" in str(report)
    assert state.suppressed(conn) == {}
