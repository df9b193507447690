import smtplib

from newsletter.events import load_library


def test_fixture_library_is_valid(event_folder):
    library = load_library(event_folder)
    assert [str(p) for p in library.problems] == []
    assert len(library.events) == 5


def test_smtp_server_fixture_records_messages(smtp_server):
    with smtplib.SMTP(smtp_server.host, smtp_server.port) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nbody\r\n")
    assert smtp_server.handler.recipients() == ["b@example.org"]
    assert smtp_server.handler.messages[0].message["Subject"] == "hi"
