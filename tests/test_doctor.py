"""newsletter doctor: every check against real parts (aiosmtpd on 127.0.0.1, TLS with a certificate made here)."""

import base64
import ipaddress
import ssl
from datetime import UTC, date, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from newsletter import storage
from newsletter.cli import cli
from newsletter.doctor import database_check, run_checks, smtp_checks
from newsletter.storage import sqlite
from tests.conftest import RecordingHandler, free_port

TODAY = date(2026, 6, 25)
SECRET = "d" * 64
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("doctor-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=auth_data.login == b"mailer" and auth_data.password == PASSWORD.encode(), handled=False)


@pytest.fixture
def relay(certificate):
    """Start an aiosmtpd relay: plain, STARTTLS with AUTH, or AUTH without TLS."""
    started = []

    def start(kind):
        options = {}
        if kind in ("starttls+auth", "auth"):
            options = {"authenticator": authenticator, "auth_required": True}
        if kind == "starttls+auth":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*certificate)
            options |= {"tls_context": context, "require_starttls": True}
        if kind == "auth":
            options["auth_require_tls"] = False
        handler = RecordingHandler()
        controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
        controller.start()
        controller.handler = handler
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def deployment(make_settings, tmp_path, certificate):
    """Settings of a finished deployment (bundled library, real-looking site) pointed at a relay."""

    def build(port, smtp="", secret=SECRET, password=PASSWORD, extra=""):
        toml = (
            '[newsletter]\nbase_url = "https://history.news-daily.test/"\n'
            'postal_address = "1 Main Street, Springfield, IL 62701, USA"\n'
            f'{extra}[smtp]\nhost = "127.0.0.1"\nport = {port}\ntimeout = 5\nca_file = "{certificate[0]}"\n{smtp}'
        )
        env = {"NEWSLETTER_SECRET": secret, "NEWSLETTER_SMTP_PASSWORD": password}
        return make_settings(toml, env=env, state=tmp_path / "var", public=tmp_path / "public")

    return build


def verdicts(checks):
    return {check.name: check.status for check in checks}


def line(checks, name):
    return next(str(check) for check in checks if check.name == name)


def test_a_finished_deployment_passes_every_check_and_gets_its_dkim_record(deployment, relay, tmp_path, monkeypatch):
    server = relay("starttls+auth")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    dkim = f'[dkim]\ndomain = "news-daily.test"\nselector = "2026"\nprivate_key = "{pem}"\n'
    settings = deployment(server.port, 'security = "starttls"\nusername = "mailer"\n', extra=dkim)
    checks = run_checks(settings, TODAY)
    assert verdicts(checks) == {
        "secret": "ok", "base_url": "ok", "postal_address": "ok", "database": "ok", "events": "ok", "templates": "ok",
        "dkim": "ok", "smtp": "ok", "starttls": "ok", "auth": "ok", "sender": "ok",
    }  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert f'2026._domainkey.news-daily.test. IN TXT "v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"' in line(
        checks, "dkim"
    )
    assert "certificate verified" in line(checks, "starttls")
    assert server.handler.messages == []  # nothing was sent
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", PASSWORD)
    result = CliRunner().invoke(cli, ["--config", str(settings.source), "doctor"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "11 checks: 0 failed"


def test_a_plain_relay_without_auth(deployment, relay):
    server = relay("plain")
    checks = smtp_checks(deployment(server.port, 'security = "none"\n'))
    assert [verdicts(checks)[name] for name in ("smtp", "starttls", "auth", "sender")] == ["ok", "skip", "skip", "ok"]


def test_auth_without_starttls(deployment, relay):
    server = relay("auth")
    checks = smtp_checks(deployment(server.port, 'security = "none"\nusername = "mailer"\n'))
    assert verdicts(checks)["auth"] == "ok" and verdicts(checks)["sender"] == "ok"


def test_a_wrong_password_fails_with_the_servers_reply(deployment, relay, monkeypatch):
    server = relay("starttls+auth")
    settings = deployment(server.port, 'security = "starttls"\nusername = "mailer"\n', password="wrong")
    checks = smtp_checks(settings)
    assert line(checks, "auth").startswith("FAIL auth: refused for 'mailer': 535")
    assert "sender" not in verdicts(checks)  # nothing after a failed step
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "wrong")
    result = CliRunner().invoke(cli, ["--config", str(settings.source), "doctor"])
    assert result.exit_code == 1 and "FAIL auth: refused for 'mailer': 535" in result.stdout
    assert result.stdout.splitlines()[-1] == "10 checks: 1 failed"


def test_a_relay_that_wants_auth_when_none_is_configured(deployment, relay):
    server = relay("auth")
    checks = smtp_checks(deployment(server.port, 'security = "none"\n'))
    assert verdicts(checks)["auth"] == "skip"
    assert line(checks, "sender").startswith("FAIL sender: MAIL FROM:<history@example.org> refused: 530")


def test_starttls_configured_but_not_offered(deployment, relay):
    server = relay("plain")
    checks = smtp_checks(deployment(server.port, 'security = "starttls"\n'))
    assert line(checks, "starttls") == "FAIL starttls: the server does not offer STARTTLS (smtp.security = starttls)"


def test_an_untrusted_certificate_fails_starttls(make_settings, relay, tmp_path):
    server = relay("starttls+auth")
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "starttls"\ntimeout = 5\n'  # no ca_file
    checks = smtp_checks(make_settings(toml, state=tmp_path / "var"))
    assert verdicts(checks)["starttls"] == "FAIL" and "CERTIFICATE_VERIFY_FAILED" in line(checks, "starttls")


def test_an_unreachable_relay(deployment):
    port = free_port()  # nothing listens there
    checks = smtp_checks(deployment(port))
    assert line(checks, "smtp").startswith(f"FAIL smtp: cannot connect to 127.0.0.1:{port}")
    assert "starttls" not in verdicts(checks)


def test_the_example_settings_fail_before_the_first_send(make_settings, event_folder, relay, tmp_path):
    server = relay("plain")
    toml = f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\n'
    settings = make_settings(toml, env={"NEWSLETTER_SECRET": "short"}, events=event_folder, state=tmp_path / "v")
    checks = run_checks(settings, TODAY)
    assert line(checks, "secret") == (
        "FAIL secret: NEWSLETTER_SECRET has 5 characters, fewer than 32 "
        "(python3 -c 'import secrets; print(secrets.token_hex(32))')"
    )
    assert line(checks, "base_url").startswith("FAIL base_url: https://example.org/history/ is the example")
    assert "CAN-SPAM" in line(checks, "postal_address") and verdicts(checks)["postal_address"] == "FAIL"
    assert line(checks, "events").endswith("4/366 days have an event; a day without one cannot be sent")
    assert verdicts(checks)["dkim"] == "skip" and verdicts(checks)["templates"] == "ok"


def test_a_broken_template_names_its_file_and_line(make_settings, tmp_path, relay):
    import shutil

    from newsletter.config import bundled

    templates = tmp_path / "templates"
    shutil.copytree(bundled("templates"), templates)
    (templates / "web" / "index.html").write_text("{% for x in %}\n", encoding="utf-8")
    settings = make_settings(f'[paths]\ntemplates = "{templates}"\nstate = "{tmp_path / "var"}"\n')
    checks = run_checks(settings, TODAY)
    assert line(checks, "templates").startswith(f"FAIL templates: {templates / 'web' / 'index.html'}:1:")


def test_the_database_check_names_the_state_database_and_changes_nothing(make_settings, tmp_path):
    settings = make_settings(state=tmp_path / "var")
    assert str(database_check(settings)) == f"ok   database: {tmp_path / 'var' / 'newsletter.sqlite3'}: no state yet; the first send creates it"
    assert not (tmp_path / "var").exists()
    storage.connect(settings).close()
    assert str(database_check(settings)) == (
        f"ok   database: {tmp_path / 'var' / 'newsletter.sqlite3'} (sqlite): {len(sqlite.MIGRATIONS)} migrations applied"
    )


def test_the_database_check_reaches_postgresql_and_fails_in_one_line_when_it_cannot(make_settings, pg_server):
    url = pg_server.fresh_database("doctor_check")
    storage.connect(make_settings(env={"NEWSLETTER_DATABASE_URL": url})).close()
    check = database_check(make_settings(env={"NEWSLETTER_DATABASE_URL": url}))
    assert str(check) == f"ok   database: {url} (postgresql): {len(sqlite.MIGRATIONS)} migrations applied"
    missing = pg_server.url("no_such_database")
    check = database_check(make_settings(env={"NEWSLETTER_DATABASE_URL": missing}))
    assert check.status == "FAIL" and check.detail.startswith(f"{missing}: the database does not exist")
