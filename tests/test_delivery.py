"""Delivery against a real SMTP server on 127.0.0.1: exactly once, through every fault."""

import dataclasses
import signal
import smtplib
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from newsletter import state, storage
from newsletter.editions import dry_run, send_day, send_test_copy
from newsletter.errors import DeliveryError
from newsletter.events import load_events
from newsletter.ledger import DatabaseLedger
from newsletter.mail.transport import Connection, Permanent, Temporary, chained, transaction
from newsletter.mail.wire import Wire, wire_data
from newsletter.render import render_edition
from newsletter.selection import select_edition
from newsletter.sending.throttle import Throttle
from newsletter.storage import sqlite
from newsletter.subscribers import Subscriber
from tests.conftest import RecordingHandler, free_port, subprocess_env

DAY = date(2026, 6, 24)


def subscribers_csv(path: Path, count: int, extra: str = "") -> Path:
    rows = "".join(f"reader{i}@example.com,Reader {i},\n" for i in range(count))
    path.write_text("email,name,timezone\n" + rows + extra, encoding="utf-8")
    return path


@pytest.fixture
def make_sender(make_settings, event_folder, tmp_path):
    """Settings that send to a given server with a given subscriber list."""

    def build(server, count=5, extra="", smtp="", env=None):
        csv = subscribers_csv(tmp_path / "subscribers.csv", count, extra)
        security = "" if "security" in smtp else 'security = "none"\n'
        toml = f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\n{security}retry_delay = 0.01\nmax_attempts = 3\ntimeout = 5\n{smtp}'
        return make_settings(
            toml,
            env={"NEWSLETTER_SECRET": "s", **(env or {})},
            events=event_folder,
            state=tmp_path / "var",
            public=tmp_path / "public",
            subscribers=csv,
        )

    return build


def ledger_rows(settings, day=DAY):
    conn = storage.connect(settings)
    return {
        row["email"]: dict(row) for row in conn.execute("SELECT * FROM deliveries WHERE day = ?", (day.isoformat(),))
    }


def test_every_subscriber_gets_one_message_and_a_delivered_row(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=12)
    result = send_day(settings, DAY)
    assert (result.delivered, result.bounced, result.failed) == (12, 0, 0) and result.complete
    assert sorted(smtp_server.handler.recipients()) == sorted(f"reader{i}@example.com" for i in range(12))
    rows = ledger_rows(settings)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    first = rows["reader0@example.com"]
    assert first["attempts"] == 1 and first["last_reply"].startswith("250")
    received = {m.rcpt_tos[0]: m.message for m in smtp_server.handler.messages}
    assert first["message_id"] == received["reader0@example.com"]["Message-ID"]
    assert received["reader3@example.com"]["To"] == "Reader 3 <reader3@example.com>"
    assert state.recorded_editions(storage.connect(settings))[DAY] == "06-24-first-thing"


def test_a_rerun_mails_nobody_twice(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=5)
    send_day(settings, DAY)
    result = send_day(settings, DAY)
    assert result.delivered == 0
    assert len(smtp_server.handler.messages) == 5


def test_a_rerun_after_new_subscribers_mails_only_the_new_ones(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=3)
    send_day(settings, DAY)
    subscribers_csv(settings.paths.subscribers, 5)
    assert send_day(settings, DAY).delivered == 2
    assert sorted(smtp_server.handler.recipients()) == sorted(f"reader{i}@example.com" for i in range(5))


def test_temporary_failures_are_retried_then_succeed(smtp_server, make_sender):
    smtp_server.handler.replies = ["451 4.3.0 try again later", "421 4.7.0 busy"]
    settings = make_sender(smtp_server, count=1, smtp="connections = 1\n")
    result = send_day(settings, DAY)
    assert result.delivered == 1
    assert ledger_rows(settings)["reader0@example.com"]["attempts"] == 3


def test_temporary_failures_that_persist_are_failed_and_can_be_retried(smtp_server, make_sender):
    smtp_server.handler.replies = ["451 4.3.0 try again later"] * 3
    settings = make_sender(smtp_server, count=1, smtp="connections = 1\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.failed, result.complete) == (0, 1, False)
    row = ledger_rows(settings)["reader0@example.com"]
    assert (row["status"], row["last_reply"]) == ("failed", "451 4.3.0 try again later")
    retry = send_day(settings, DAY, retry_failed=True)
    assert (retry.delivered, retry.failed) == (1, 0)
    assert ledger_rows(settings)["reader0@example.com"]["status"] == "delivered"


def test_permanent_rejection_is_bounced_suppressed_and_never_retried(smtp_server, make_sender):
    smtp_server.handler.reject = {"reader1@example.com": "550 5.1.1 no such user"}
    settings = make_sender(smtp_server, count=3)
    result = send_day(settings, DAY)
    assert (result.delivered, result.bounced) == (2, 1) and result.complete
    row = ledger_rows(settings)["reader1@example.com"]
    assert (row["status"], row["attempts"], row["last_reply"]) == ("bounced", 1, "550 5.1.1 no such user")
    assert state.suppressed(storage.connect(settings)) == {"reader1@example.com": "bounced"}


def test_a_bounced_address_is_not_mailed_the_next_edition(smtp_server, make_sender, event_folder):
    smtp_server.handler.reject = {"reader1@example.com": "550 5.1.1 no such user"}
    settings = make_sender(smtp_server, count=3)
    send_day(settings, DAY)
    smtp_server.handler.messages.clear()
    result = send_day(settings, date(2026, 6, 25))
    assert result.skipped == 1 and "1 suppressed" in result.skipped_detail
    assert sorted(smtp_server.handler.recipients()) == ["reader0@example.com", "reader2@example.com"]


def test_a_dropped_connection_is_reopened_and_the_message_resent(smtp_server, make_sender):
    smtp_server.handler.drop = 1
    settings = make_sender(smtp_server, count=4, smtp="connections = 1\n")
    result = send_day(settings, DAY)
    assert result.delivered == 4
    assert sorted(smtp_server.handler.recipients()) == sorted(f"reader{i}@example.com" for i in range(4))


def test_bad_csv_rows_are_skipped_and_the_send_goes_on(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=2, extra="broken-address,X,\nreader0@EXAMPLE.com,Dup,\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.skipped) == (2, 2)
    assert result.skipped_detail == "1 invalid, 1 duplicate, 0 suppressed"


def test_rate_limit_spaces_the_messages(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=6, smtp="rate_limit = 20\nconnections = 2\n")
    started = time.monotonic()
    assert send_day(settings, DAY).delivered == 6
    assert time.monotonic() - started >= 5 / 20 * 0.9  # 6 messages at 20/s need at least 0.25 s


def test_throttle_hourly_cap_blocks_until_the_hour_has_passed(tmp_path):
    now = [1000.0]
    throttle = Throttle(sqlite.connect(tmp_path / "var"), "relay", 0, 2, clock=lambda: now[0])
    stop = threading.Event()
    assert throttle.wait(stop) and throttle.wait(stop)
    stop.set()  # a third send would have to wait an hour: with stop set it gives up at once
    assert throttle.wait(stop) is False


def test_two_sends_of_one_edition_at_once_share_it_and_mail_everyone_once(smtp_server, make_sender):
    smtp_server.handler.delay = 0.005
    settings = make_sender(smtp_server, count=80, smtp="connections = 2\n")
    results = []
    senders = [threading.Thread(target=lambda: results.append(send_day(settings, DAY))) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    assert len(results) == 2, "neither send refuses: the second one helps"
    received = smtp_server.handler.recipients()
    assert sorted(received) == sorted(f"reader{i}@example.com" for i in range(80))
    assert sum(r.delivered for r in results) == 80
    assert {row["status"] for row in ledger_rows(settings).values()} == {"delivered"}


def test_dry_run_counts_and_changes_nothing(smtp_server, make_sender, tmp_path):
    settings = make_sender(smtp_server, count=3, extra="bad,X,\n")
    report = dry_run(settings, DAY)
    assert report.recipients == 3 and report.tally.invalid == 1
    assert not settings.paths.state.exists()
    assert smtp_server.handler.messages == []


def test_outbox_writes_one_eml_per_recipient(smtp_server, make_sender, tmp_path):
    settings = make_sender(smtp_server, count=3)
    dry_run(settings, DAY, outbox=tmp_path / "outbox")
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert [f.name for f in files] == [f"2026-06-24_reader{i}@example.com.eml" for i in range(3)]
    assert smtp_server.handler.messages == []


def test_a_test_copy_is_recorded_apart_from_the_edition(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=2)
    assert send_test_copy(settings, DAY, "editor@example.org").startswith("250")
    conn = storage.connect(settings)
    assert [tuple(r) for r in conn.execute("SELECT email, status FROM test_sends")] == [
        ("editor@example.org", "delivered")
    ]
    assert DatabaseLedger(conn).counts(DAY)["delivered"] == 0
    assert send_day(settings, DAY).delivered == 2


# TLS and AUTH, with a self-signed certificate made here.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress

    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"mailer" and auth_data.password == b"correct horse"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls_server(certificate):
    """Start an aiosmtpd server with STARTTLS or implicit TLS, and AUTH required."""
    controllers = []

    def start(mode):
        cert, key = certificate
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        handler = RecordingHandler()
        options = {"authenticator": authenticator, "auth_required": True}
        if mode == "starttls":
            controller = Controller(
                handler, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True, **options
            )
        else:
            # implicit TLS: the whole session is encrypted, which aiosmtpd's auth_require_tls does not see
            controller = Controller(
                handler, hostname="127.0.0.1", port=free_port(), ssl_context=context, auth_require_tls=False, **options
            )
        controller.start()
        controllers.append(controller)
        controller.handler = handler
        return controller

    yield start
    for controller in controllers:
        controller.stop()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_tls_and_auth(tls_server, make_sender, certificate, mode):
    server = tls_server(mode)
    smtp = f'security = "{mode}"\nusername = "mailer"\nca_file = "{certificate[0]}"\n'
    settings = make_sender(server, count=3, smtp=smtp, env={"NEWSLETTER_SMTP_PASSWORD": "correct horse"})
    assert send_day(settings, DAY).delivered == 3
    assert len(server.handler.messages) == 3


def test_wrong_password_stops_the_run_with_one_clear_error(tls_server, make_sender, certificate):
    server = tls_server("starttls")
    smtp = f'security = "starttls"\nusername = "mailer"\nca_file = "{certificate[0]}"\n'
    settings = make_sender(server, count=3, smtp=smtp, env={"NEWSLETTER_SMTP_PASSWORD": "wrong"})
    with pytest.raises(DeliveryError, match="SMTP authentication failed for 'mailer': 535"):
        send_day(settings, DAY)
    assert {r["status"] for r in ledger_rows(settings).values()} == {"pending"}  # nobody lost, nobody failed


def test_an_untrusted_certificate_is_refused(tls_server, make_sender):
    server = tls_server("tls")
    settings = make_sender(
        server,
        count=1,
        smtp='security = "tls"\nusername = "mailer"\n',
        env={"NEWSLETTER_SMTP_PASSWORD": "correct horse"},
    )
    with pytest.raises(DeliveryError, match="TLS with 127.0.0.1"):
        send_day(settings, DAY)
    assert server.handler.messages == []


# A crash in the middle of a send.


def test_kill_9_in_the_middle_then_rerun_loses_no_one(smtp_server, make_sender, tmp_path):
    smtp_server.handler.delay = 0.02
    settings = make_sender(smtp_server, count=60, smtp="connections = 2\n")
    env = subprocess_env(NEWSLETTER_SECRET="s")
    config = str(tmp_path / "newsletter.toml")
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", config, "send", "--date", DAY.isoformat()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while len(smtp_server.handler.messages) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    before = settled_count(smtp_server.handler)
    assert 15 <= before < 60, "the kill must land in the middle of the send"
    smtp_server.handler.delay = 0
    result = send_day(settings, DAY)
    rows = ledger_rows(settings)
    assert len(rows) == 60 and {r["status"] for r in rows.values()} == {"delivered"}
    received = smtp_server.handler.recipients()
    assert set(received) == {f"reader{i}@example.com" for i in range(60)}
    twice = len(received) - len(set(received))
    assert twice <= 2, "only messages in flight at the crash (one per connection) may be sent twice"
    assert result.delivered == 60 - before + twice


def settled_count(handler, quiet: float = 0.3) -> int:
    """Return the server's message count once it stops changing: a message whose data arrived
    before the kill is still being handled (the handler's delay) after the client is gone."""
    count = len(handler.messages)
    while True:
        time.sleep(quiet)
        if len(handler.messages) == count:
            return count
        count = len(handler.messages)


class CountingSMTP(smtplib.SMTP):
    """smtplib.SMTP that counts its writes: one write per round trip."""

    writes = 0

    def send(self, s):
        self.writes += 1
        super().send(s)


@pytest.fixture(params=[True, False], ids=["pipelining", "classic"])
def session(request, smtp_server):
    """An open SMTP session with the test server, which offers PIPELINING or not."""
    smtp_server.handler.pipelining = request.param
    server = CountingSMTP("127.0.0.1", smtp_server.port, timeout=5)
    server.ehlo()
    server.writes = 0
    yield server, smtp_server.handler
    server.close()


def test_one_transaction_is_two_round_trips_with_pipelining_four_without(session):
    server, handler = session
    reply = transaction(server, "history@example.org", "a@example.com", wire_data(b"Subject: x\r\n\r\nbody\r\n"))
    assert reply.startswith("250")
    assert server.writes == (2 if handler.pipelining else 4)
    assert handler.messages[0].data.endswith(b"body\r\n")


def test_the_next_envelope_rides_behind_the_content_so_a_message_is_one_round_trip(session):
    server, handler = session
    first = transaction(server, "history@example.org", "a@example.com", wire_data(b"Subject: a\r\n\r\none\r\n"),
                        following=lambda: "b@example.com")  # fmt: skip
    second = transaction(server, "history@example.org", "b@example.com", wire_data(b"Subject: b\r\n\r\ntwo\r\n"))
    assert first.startswith("250") and second.startswith("250")
    assert server.writes == (3 if handler.pipelining else 8)  # without PIPELINING each envelope goes on its own
    assert [(m.rcpt_tos, m.data) for m in handler.messages] == [
        (["a@example.com"], b"Subject: a\r\n\r\none\r\n"), (["b@example.com"], b"Subject: b\r\n\r\ntwo\r\n")
    ]  # fmt: skip


def test_a_refused_message_leaves_the_envelope_behind_it_usable(session):
    server, handler = session
    handler.replies.append("451 4.3.0 busy")
    with pytest.raises(Temporary, match="451"):
        transaction(server, "history@example.org", "a@example.com", wire_data(b"Subject: a\r\n\r\none\r\n"),
                    following=lambda: "b@example.com")  # fmt: skip
    handler.reject["c@example.com"] = "550 5.1.1 no such user"
    transaction(server, "history@example.org", "b@example.com", wire_data(b"Subject: b\r\n\r\ntwo\r\n"),
                following=lambda: "c@example.com")  # fmt: skip
    with pytest.raises(Permanent, match="550"):  # a refused RCPT of a chained envelope: the session goes on
        transaction(server, "history@example.org", "c@example.com", wire_data(b"Subject: c\r\n\r\nno\r\n"))
    transaction(server, "history@example.org", "d@example.com", wire_data(b"Subject: d\r\n\r\nfour\r\n"))
    assert handler.recipients() == ["b@example.com", "d@example.com"]


def test_closing_with_an_envelope_open_sends_nothing_for_it(smtp_server, make_sender):
    connection = Connection(make_sender(smtp_server))
    connection.send("history@example.org", "a@example.com", wire_data(b"Subject: a\r\n\r\none\r\n"), lambda: "b@example.com")
    assert connection.server is not None and chained(connection.server) == "b@example.com"
    connection.close()  # the server waits for b's content: no QUIT (it would be read as content), no empty message
    connection.send("history@example.org", "c@example.com", wire_data(b"Subject: c\r\n\r\nthree\r\n"))
    connection.close()
    assert settled_count(smtp_server.handler) == 2
    assert smtp_server.handler.recipients() == ["a@example.com", "c@example.com"]


def test_leading_dots_and_line_endings_survive_the_wire(session):
    server, handler = session
    message = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nlast line without CRLF"
    transaction(server, "history@example.org", "a@example.com", wire_data(message))
    assert handler.messages[0].data == message.replace(b"without CRLF", b"without CRLF\r\n")
    transaction(server, "history@example.org", "b@example.com", wire_data(b"Subject: bare\n\nline\rnext\n"))
    assert handler.messages[1].data == b"Subject: bare\r\n\r\nline\r\nnext\r\n"


@pytest.mark.parametrize(
    ("where", "reply", "outcome"),
    [("rcpt", "550 5.1.1 no such user", Permanent), ("rcpt", "450 4.2.1 try later", Temporary),
     ("data", "554 5.7.1 rejected", Permanent), ("data", "451 4.3.0 busy", Temporary)],
)  # fmt: skip
def test_refusals_are_classified_and_the_session_goes_on(session, where, reply, outcome):
    server, handler = session
    if where == "rcpt":
        handler.reject["refused@example.com"] = reply
    else:
        handler.replies.append(reply)
    with pytest.raises(outcome, match=reply.split()[0]):
        transaction(server, "history@example.org", "refused@example.com", wire_data(b"Subject: x\r\n\r\nbody\r\n"))
    assert transaction(
        server, "history@example.org", "next@example.com", wire_data(b"Subject: y\r\n\r\nok\r\n")
    ).startswith("250")
    assert handler.recipients() == ["next@example.com"]


def test_wire_data_doubles_leading_dots_and_ends_the_data():
    assert wire_data(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert wire_data(b"a") == b"a\r\n.\r\n"


@pytest.fixture
def rendered(settings):
    return render_edition(select_edition(DAY, load_events(settings.paths.events)), settings)


NAMES = ["", "Ada", ".dot first", "Zoë Ünïcode", 'Quote "me"', "line\r\nbreak", ". . .", "tab\there", "100% %s Ada", "O'Brien, J."]


def test_wire_data_per_subscriber_is_stuffed_once_per_edition_and_exact(rendered):
    dotted = dataclasses.replace(rendered, segments=(*rendered.segments[:-1], b"\r\n.dotted 100%s %%" + rendered.segments[-1]))
    wire = Wire(dotted)
    assert wire.template is not None  # our templates allow the fast path
    assert b"\r\n..dotted" in wire.data_for(Subscriber("a@example.com", "A"))
    for i, name in enumerate(NAMES):
        subscriber = Subscriber(f"r{i}@example.com", name)
        assert wire.data_for(subscriber) == wire_data(dotted.message_for(subscriber))


def test_a_placeholder_at_a_line_start_falls_back_to_stuffing_each_message(rendered):
    at_line_start = dataclasses.replace(rendered, segments=(rendered.segments[0] + b"\r\n", *rendered.segments[1:]))
    wire = Wire(at_line_start)
    assert wire.template is None
    assert wire.data_for(Subscriber("a@example.com", ".x")) == wire_data(
        at_line_start.message_for(Subscriber("a@example.com", ".x"))
    )


def test_a_signed_message_is_signed_unstuffed_and_sent_stuffed(rendered):
    seen = []

    def sign(message: bytes) -> bytes:
        seen.append(message)
        return b"DKIM-Signature: v=1; b=\r\n\tabc\r\n" + message

    dotted = (*rendered.segments[:-1], b"\r\n.dotted" + rendered.segments[-1])
    signed = dataclasses.replace(rendered, segments=dotted, sign=sign, body_hash=None)
    wire = Wire(signed)
    assert wire.template is not None
    for name in NAMES:
        subscriber = Subscriber("a@example.com", name)
        assert wire.data_for(subscriber) == wire_data(signed.message_for(subscriber))
        assert b"\r\n.dotted" in seen[-1], "the signature covers the bytes before stuffing"


def test_a_resend_carries_the_message_id_recorded_at_planning(smtp_server, make_sender):
    settings = make_sender(smtp_server, count=1)
    smtp_server.handler.replies.extend(["451 4.3.0 try later"] * 3)
    assert send_day(settings, DAY).failed == 1
    conn = storage.connect(settings)
    conn.execute("UPDATE deliveries SET message_id = '<planned.1@example.org>'")
    conn.close()
    assert send_day(settings, DAY, retry_failed=True).delivered == 1
    assert smtp_server.handler.messages[0].message["Message-ID"] == "<planned.1@example.org>"


def test_a_ledger_that_cannot_record_stops_the_send_and_loses_no_one(smtp_server, make_sender, monkeypatch):
    settings = make_sender(smtp_server, count=20, smtp="connections = 1\n")

    def disk_full(self, day, accepted):
        raise (sqlite3.OperationalError if self.conn.backend == "sqlite" else psycopg.errors.DiskFull)(
            "database or disk is full"
        )

    with monkeypatch.context() as patch:
        patch.setattr(DatabaseLedger, "mark_delivered_many", disk_full)
        with pytest.raises(DeliveryError, match="cannot record deliveries in the ledger"):
            send_day(settings, DAY)
    assert {row["status"] for row in ledger_rows(settings).values()} == {"pending"}
    sent = len(smtp_server.handler.messages)
    if settings.database.url:  # every acceptance goes to the ledger at once: nothing more is sent
        assert sent == 1, "nothing more is sent once acceptances cannot be recorded"
    else:  # SQLite: acceptances are in the sender's journal, which the ledger could not take at the end
        assert sent == 20
    again = send_day(settings, DAY)
    assert {row["status"] for row in ledger_rows(settings).values()} == {"delivered"}
    received = smtp_server.handler.recipients()
    assert sorted(set(received)) == sorted(f"reader{i}@example.com" for i in range(20))
    assert len(received) == 20 + (1 if settings.database.url else 0), "only the message in flight is sent twice"
    assert again.delivered == 20 - sent + (1 if settings.database.url else 0)


def test_a_big_list_is_planned_in_a_process_of_its_own_while_the_first_rows_go_out(smtp_server, make_sender, monkeypatch):
    from newsletter import editions

    monkeypatch.setattr(editions, "PROCESS_PLANNING_BYTES", 1)  # every list counts as big here
    settings = make_sender(smtp_server, count=30, extra="not-an-address,Nobody,\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.planned, result.skipped) == (30, 30, 1) and result.complete
    assert "1 invalid" in result.summary()
    assert Counter(smtp_server.handler.recipients()) == Counter({f"reader{i}@example.com": 1 for i in range(30)})
    assert {row["status"] for row in ledger_rows(settings).values()} == {"delivered"}


def test_a_script_without_a_main_guard_is_told_why_its_planning_process_died(smtp_server, make_sender, tmp_path):
    import pickle

    settings = make_sender(smtp_server, count=3)
    (tmp_path / "settings.pickle").write_bytes(pickle.dumps(settings))
    script = tmp_path / "daily.py"  # calls send_day at import: a spawned process runs it again
    script.write_text(
        "import pickle, sys\nfrom datetime import date\nfrom newsletter import editions\n"
        "from newsletter.errors import NewsletterError\n"
        "editions.PROCESS_PLANNING_BYTES = 1\n"
        f"settings = pickle.loads(open({str(tmp_path / 'settings.pickle')!r}, 'rb').read())\n"
        f"try:\n    editions.send_day(settings, date.fromisoformat({DAY.isoformat()!r}))\n"
        "except NewsletterError as exc:\n    print(f'Error: {exc}')\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.stdout.startswith("Error: the planning process died"), run.stdout + run.stderr
    assert "if daily.py calls send_day when imported" in run.stdout and '__name__ == "__main__"' in run.stdout
    assert smtp_server.handler.messages == []


def test_a_planning_process_that_fails_is_one_line_and_sends_nothing(smtp_server, make_sender, monkeypatch):
    from newsletter import editions
    from newsletter.errors import SubscriberError

    monkeypatch.setattr(editions, "PROCESS_PLANNING_BYTES", 1)
    settings = make_sender(smtp_server, count=3)
    settings.paths.subscribers.write_text("address,name\nreader0@example.com,R\n")
    with pytest.raises(SubscriberError, match="no 'email' column"):
        send_day(settings, DAY)
    assert smtp_server.handler.messages == []
