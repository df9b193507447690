"""The inbox: a real Maildir holding a DSN, an ARF complaint and a mailto unsubscribe, imported twice."""

import mailbox
from datetime import date
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from click.testing import CliRunner

from newsletter import state, storage
from newsletter.cli import cli
from newsletter.ledger import DatabaseLedger
from newsletter.mail.inbox import import_paths, mark_seen, summary
from newsletter.subscribers import Subscriber
from tests.test_bounces import dsn

SENT_ID = "<20260625.abc@example.org>"  # the Message-ID of the edition Ada received


def arf(recipient, message_id=SENT_ID, kind="abuse"):
    """A complaint report (ARF, RFC 5965) as a feedback loop sends it."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "fbl@mailbox-provider.example"
    report["Subject"] = "Complaint about message"
    report["Message-ID"] = "<fbl-1@mailbox-provider.example>"
    report.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.1."))
    fields = MIMEBase("message", "feedback-report")
    fields.set_payload(
        f"Feedback-Type: {kind}\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: <{recipient}>\r\nReporting-MTA: dns; fbl.mailbox-provider.example\r\n"
    )
    report.attach(fields)
    original = EmailMessage()
    original["Message-ID"] = message_id
    original["To"] = "redacted@mailbox-provider.example"  # providers often redact the recipient
    original["Subject"] = "June 25: Syrian officers defect"
    report.attach(MIMEText(original.as_string(), "rfc822-headers"))
    return report


def mailto_unsubscribe(sender, to="history@example.org", subject="unsubscribe", **headers):
    """What a mail client sends for the mailto: link of List-Unsubscribe."""
    message = EmailMessage()
    message["From"] = f"Reader <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<unsub-{sender}-{subject}@client.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Please unsubscribe me.")
    return message


@pytest.fixture
def mailed(settings):
    """A state database in which Ada, Bob and Carol received the June 25 edition."""
    conn = storage.connect(settings)
    ledger = DatabaseLedger(conn)
    ids = {"ada@example.com": SENT_ID}
    readers = [Subscriber(a) for a in ("ada@example.com", "bob@example.com", "carol@example.com")]
    ledger.plan(date(2026, 6, 25), readers, lambda s: ids.get(s.key, f"<20260625.{s.key}@example.org>"))
    for reader in readers:
        ledger.mark_delivered(date(2026, 6, 25), reader.email, "250 ok")
    return conn


@pytest.fixture
def maildir(tmp_path):
    """The bounce mailbox as an MTA delivers it: a DSN for Bob, an ARF complaint about Ada, Carol's unsubscribe."""
    folder = tmp_path / "Maildir"
    box = mailbox.Maildir(folder, create=True)
    dsn_file = dsn(tmp_path / "dsn.eml", "bob@example.com", "5.1.1", message_id="<20260625.bob@example.org>")
    box.add(dsn_file.read_bytes())  # no Message-ID: known again by the digest of its bytes
    box.add(arf("ada@example.com").as_bytes())
    box.add(mailto_unsubscribe("carol@example.com").as_bytes())
    box.close()
    return folder


def import_command(settings, *paths):
    result = CliRunner().invoke(
        cli, ["--config", str(settings.source), "inbox", "import", *map(str, paths)], catch_exceptions=False
    )
    return result.exit_code, result.stdout.splitlines()


def test_a_maildir_is_read_acted_on_and_marked_so_a_second_import_changes_nothing(settings, mailed, maildir):
    code, lines = import_command(settings, maildir)
    assert code == 0, lines
    assert sorted(line.split(": ", 1)[1] for line in lines[:-1]) == [
        "complained ada@example.com: abuse report from fbl.mailbox-provider.example; suppressed",
        "suppressed bob@example.com: permanent failure 5.1.1",
        "unsubscribed carol@example.com: mail to history@example.org",
    ]
    assert lines[-1] == "3 messages: 1 suppressed, 1 complained, 1 unsubscribed"
    assert state.suppressed(mailed) == {
        "ada@example.com": "complained",
        "bob@example.com": "bounced",
        "carol@example.com": "unsubscribed",
    }
    box = mailbox.Maildir(maildir, create=False)
    assert [(m.get_subdir(), m.get_flags()) for m in box] == [("cur", "S")] * 3  # handled, moved, flagged
    assert not list((maildir / "new").iterdir())
    before = list(mailed.conn.iterdump())

    code, again = import_command(settings, maildir)
    assert code == 0
    assert all(line.endswith("nothing changed") and "already handled on" in line for line in again[:-1])
    assert again[-1] == "3 messages: 0 suppressed; 3 already handled, nothing changed"
    assert list(mailed.conn.iterdump()) == before


def test_the_same_report_as_an_eml_file_twice_says_so_the_second_time(settings, mailed, tmp_path):
    path = dsn(tmp_path / "b.eml", "bob@example.com", "5.1.1")
    first = import_paths([path], settings, mailed)
    second = import_paths([path], settings, mailed)
    assert [r.lines() for r in first] == [[f"{path}: suppressed bob@example.com: permanent failure 5.1.1"]]
    assert second[0].handled_before and "nothing changed" in second[0].lines()[0]
    assert summary(second) == "1 message: 0 suppressed; 1 already handled, nothing changed"


def test_a_complaint_found_by_message_id_suppresses_the_reader_we_mailed(settings, mailed, tmp_path):
    path = tmp_path / "fbl.eml"
    path.write_bytes(arf("someone@forwarded.example").as_bytes())
    [report] = import_paths([path], settings, mailed)
    assert [(o.action, o.address) for o in report.outcomes] == [("complained", "ada@example.com")]
    assert state.suppressed(mailed) == {"ada@example.com": "complained"}


def test_a_not_spam_report_changes_nothing(settings, mailed, tmp_path):
    path = tmp_path / "fbl.eml"
    path.write_bytes(arf("ada@example.com", kind="not-spam").as_bytes())
    [report] = import_paths([path], settings, mailed)
    assert report.outcomes[0].action == "ignored" and state.suppressed(mailed) == {}


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (mailto_unsubscribe("stranger@example.net"), "not a subscriber"),
        (mailto_unsubscribe("carol@example.com", subject="Re: June 25"), "not a delivery status"),  # a reply to From
        (mailto_unsubscribe("carol@example.com", Auto_Submitted="auto-replied"), "automatic"),  # out of office
    ],
    ids=["stranger", "reply", "auto-reply"],
)
def test_mail_to_the_unsubscribe_address_unsubscribes_only_a_subscriber_asking(
    settings, mailed, tmp_path, message, why
):
    path = tmp_path / "m.eml"
    path.write_bytes(message.as_bytes())
    [report] = import_paths([path], settings, mailed)
    assert report.outcomes[0].action == "ignored" and why in report.outcomes[0].detail
    assert state.suppressed(mailed) == {}


def test_a_dedicated_unsubscribe_address_takes_any_subject(make_settings, event_folder, tmp_path):
    settings = make_settings(
        '[sender]\nunsubscribe_address = "leave@example.org"\n', events=event_folder, state=tmp_path / "var"
    )
    conn = storage.connect(settings)
    state.add_subscriber(conn, "dan@example.com", source="web")
    path = tmp_path / "m.eml"
    path.write_bytes(mailto_unsubscribe("dan@example.com", to="leave@example.org", subject="stop").as_bytes())
    [report] = import_paths([path], settings, conn)
    assert (report.outcomes[0].action, report.outcomes[0].address) == ("unsubscribed", "dan@example.com")


def test_bounces_import_stays_an_alias_and_errors_name_the_path(settings, mailed, tmp_path):
    path = dsn(tmp_path / "b.eml", "bob@example.com", "5.1.1")
    result = CliRunner().invoke(
        cli, ["--config", str(settings.source), "bounces", "import", str(path), str(tmp_path / "missing.eml")]
    )
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}: suppressed bob@example.com: permanent failure 5.1.1",
        f"{tmp_path / 'missing.eml'}: error: cannot read: No such file or directory",
        "2 messages: 1 suppressed",
    ]
    not_maildir = tmp_path / "folder"
    not_maildir.mkdir()
    code, lines = import_command(settings, not_maildir)
    assert code == 1 and "not a Maildir" in lines[0]


def test_mark_seen_keeps_existing_flags(tmp_path):
    box = mailbox.Maildir(tmp_path / "M", create=True)
    message = mailbox.MaildirMessage(b"Subject: x\n\nbody\n")
    message.set_subdir("cur")
    message.set_flags("F")
    key = box.add(message)
    path = next((tmp_path / "M" / "cur").iterdir())
    moved = mark_seen(path)
    assert moved.name == f"{key}:2,FS" and mark_seen(moved) == moved


def test_dsns_and_unsubscribe_mails_are_addressed_to_the_bounce_mailbox(
    make_settings, event_folder, tmp_path, smtp_server
):
    from newsletter.editions import send_day

    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name,timezone\nada@example.com,Ada,\n", encoding="utf-8")
    toml = (
        '[sender]\naddress = "history@example.org"\nbounce_address = "bounces@example.org"\n'
        'unsubscribe_address = "leave@example.org"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
    )
    settings = make_settings(toml, events=event_folder, state=tmp_path / "var", subscribers=csv)
    assert send_day(settings, date(2026, 6, 24)).delivered == 1
    [received] = smtp_server.handler.messages
    assert received.mail_from == "bounces@example.org"  # the Return-Path the receiving server records
    message = received.message
    assert message["From"].addresses[0].addr_spec == "history@example.org"
    assert "<mailto:leave@example.org?subject=unsubscribe>" in " ".join(str(message["List-Unsubscribe"]).split())
