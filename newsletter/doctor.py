"""Check a deployment without sending anything: one verdict per check, for ``newsletter doctor``.

Nothing here changes state or sends a message: the SMTP check stops after AUTH and a
``MAIL FROM`` that is reset at once.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlsplit

import jinja2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter import storage
from newsletter.config import NewsletterSettings, Settings
from newsletter.errors import NewsletterError
from newsletter.events import load_library

MIN_SECRET = 32  # characters; `secrets.token_hex(32)` gives 64
EXAMPLE_DOMAINS = ("example.org", "example.com", "example.net", "example")  # RFC 2606 names, never a real site
OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    """The verdict of one check: ok, FAIL or skip (not configured, nothing to check)."""

    name: str
    status: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def run_checks(settings: Settings, today: date) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    checks = [secret_check(settings), base_url_check(settings), postal_address_check(settings), database_check(settings)]
    checks += [events_check(settings), templates_check(settings, today), dkim_check(settings)]
    return checks + smtp_checks(settings)


def failed(checks: list[Check]) -> bool:
    return any(check.status == FAIL for check in checks)


def secret_check(settings: Settings) -> Check:
    secret = settings.secret or ""
    hint = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
    if not secret:
        return Check("secret", FAIL, f"NEWSLETTER_SECRET is not set; it signs every link (make one with {hint})")
    if len(secret) < MIN_SECRET:
        return Check(
            "secret", FAIL, f"NEWSLETTER_SECRET has {len(secret)} characters, fewer than {MIN_SECRET} ({hint})"
        )
    return Check("secret", OK, f"NEWSLETTER_SECRET is set ({len(secret)} characters)")


def _is_example(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in EXAMPLE_DOMAINS)


def base_url_check(settings: Settings) -> Check:
    url = settings.newsletter.base_url
    if url == NewsletterSettings.base_url or _is_example(urlsplit(url).hostname or ""):
        return Check("base_url", FAIL, f"{url} is the example; set newsletter.base_url to where the site is served")
    if not url.startswith("https://"):
        return Check("base_url", OK, f"{url} (not https: links carry tokens, serve them over TLS)")
    return Check("base_url", OK, url)


def postal_address_check(settings: Settings) -> Check:
    address = " ".join(settings.newsletter.postal_address.split())
    if not address:
        return Check(
            "postal_address",
            FAIL,
            "not set; CAN-SPAM requires the sender's postal address in every email (newsletter.postal_address)",
        )
    return Check("postal_address", OK, address)


def database_check(settings: Settings) -> Check:
    """Reach the state database read-only (SQLite file or PostgreSQL): which one, how many migrations applied."""
    try:
        db = storage.connect_readonly(settings)
        if db is None:
            return Check("database", OK, f"{storage.label(settings)}: no state yet; the first send creates it")
        with db, db.guarded():
            applied = db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0]
    except NewsletterError as exc:
        return Check("database", FAIL, str(exc))
    return Check("database", OK, f"{db.label} ({db.backend}): {applied} migrations applied")


def events_check(settings: Settings) -> Check:
    library = load_library(settings.paths.events)
    errors, days = len(library.errors), library.coverage()
    where = settings.paths.events
    if errors:
        return Check("events", FAIL, f"{where}: {errors} errors (see 'newsletter events check')")
    if days < 366:
        return Check("events", FAIL, f"{where}: {days}/366 days have an event; a day without one cannot be sent")
    return Check("events", OK, f"{where}: {len(library.events)} events load, {days}/366 days covered")


def templates_check(settings: Settings, today: date) -> Check:
    """Parse every web template and render today's edition with the email templates."""
    from newsletter.editions import edition_for
    from newsletter.render import HTML_LIMIT, render_edition

    folder = settings.paths.templates
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True)
    try:
        images = (".ico", ".png")  # the site's raster images live beside the web templates
        names = [name for name in env.list_templates() if name.startswith("web/") and not name.endswith(images)]
        for name in names:
            env.get_template(name)
        conn = storage.connect_readonly(settings)
        try:
            edition = edition_for(today, settings, conn, record=False)
        finally:
            if conn is not None:
                conn.close()
        rendered = render_edition(edition, settings, allow_insecure_secret=True)
    except jinja2.TemplateSyntaxError as exc:
        return Check("templates", FAIL, f"{folder / (exc.filename or exc.name or '')}:{exc.lineno}: {exc.message}")
    except (jinja2.TemplateError, NewsletterError, OSError) as exc:
        return Check("templates", FAIL, f"{folder}: the {today} edition does not render: {exc}")
    size = rendered.html_size
    if size > HTML_LIMIT:
        return Check("templates", FAIL, f"the {today} edition's HTML is {size // 1024} KB: Gmail clips it")
    return Check(
        "templates", OK, f"{len(names)} web templates load; the {today} edition renders ({size / 1024:.1f} KB)"
    )


def dkim_check(settings: Settings) -> Check:
    """Read the private key and print the TXT record that publishes its public half."""
    dkim = settings.dkim
    missing = [key for key in ("domain", "selector", "private_key") if not getattr(dkim, key)]
    if len(missing) == 3:
        return Check("dkim", SKIP, "not configured: messages are not signed ([dkim] domain, selector, private_key)")
    if missing:
        return Check("dkim", FAIL, f"incomplete: set {', '.join('dkim.' + key for key in missing)} too")
    path = dkim.private_key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)  # type: ignore[union-attr]
    except OSError as exc:
        return Check("dkim", FAIL, f"cannot read {path}: {exc.strerror}")
    except (ValueError, TypeError) as exc:
        return Check("dkim", FAIL, f"{path} is not an unencrypted PEM private key ({exc})")
    record = _txt_record(key)
    if record is None:
        return Check("dkim", FAIL, f"{path}: DKIM keys are RSA or Ed25519, not {type(key).__name__}")
    kind = f"RSA {key.key_size} bits" if isinstance(key, rsa.RSAPrivateKey) else "Ed25519"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 1024:
        return Check("dkim", FAIL, f"{path}: {kind}; RFC 8301 requires at least 1024 (use 2048)")
    name = f"{dkim.selector}._domainkey.{dkim.domain}"
    return Check("dkim", OK, f'{path} readable ({kind}); publish: {name}. IN TXT "{record}"')


def _txt_record(key: object) -> str | None:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    return None


def smtp_checks(settings: Settings) -> list[Check]:
    """Connect as a send would: EHLO, STARTTLS, AUTH, then a MAIL FROM that is reset; nothing is sent."""
    smtp = settings.smtp
    where = f"{smtp.host}:{smtp.port}"
    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    try:
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        code, reply = server.ehlo()
    except ssl.SSLError as exc:
        return [Check("smtp", FAIL, f"TLS with {where} failed: {exc.reason or exc} (check smtp.ca_file)")]
    except (OSError, smtplib.SMTPException) as exc:
        return [
            Check("smtp", FAIL, f"cannot connect to {where}: {exc or type(exc).__name__} (check smtp.host, smtp.port)")
        ]
    greeting = _first_line(reply)
    checks = [Check("smtp", OK if code == 250 else FAIL, f"{where} answers EHLO: {code} {greeting}")]
    try:
        for step in (_starttls, _auth, _sender):
            check = step(server, settings, context)
            checks.append(check)
            if check.status == FAIL:
                break
    finally:
        try:
            server.quit()
        except (OSError, smtplib.SMTPException):
            server.close()
    return checks


def _starttls(server: smtplib.SMTP, settings: Settings, context: ssl.SSLContext) -> Check:
    security = settings.smtp.security
    if security == "tls":
        return Check("starttls", SKIP, "implicit TLS (smtp.security = tls): the whole session is encrypted")
    if security == "none":
        return Check("starttls", SKIP, "smtp.security = none: the session is not encrypted")
    if not server.has_extn("starttls"):
        return Check("starttls", FAIL, "the server does not offer STARTTLS (smtp.security = starttls)")
    try:
        server.starttls(context=context)
        server.ehlo()
    except ssl.SSLError as exc:
        return Check("starttls", FAIL, f"TLS failed: {exc.reason or exc} (check smtp.ca_file)")
    except (OSError, smtplib.SMTPException) as exc:
        return Check("starttls", FAIL, f"STARTTLS failed: {exc}")
    version = server.sock.version() if isinstance(server.sock, ssl.SSLSocket) else "TLS"
    return Check("starttls", OK, f"{version}, certificate verified")


def _auth(server: smtplib.SMTP, settings: Settings, context: ssl.SSLContext) -> Check:
    username = settings.smtp.username
    if not username:
        return Check("auth", SKIP, "no smtp.username: sending without AUTH")
    if not settings.smtp_password:
        return Check("auth", FAIL, "smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not")
    if not server.has_extn("auth"):
        return Check("auth", FAIL, "the server offers no AUTH here (does it need STARTTLS first?)")
    try:
        server.login(username, settings.smtp_password)
    except smtplib.SMTPAuthenticationError as exc:
        return Check("auth", FAIL, f"refused for {username!r}: {exc.smtp_code} {_first_line(exc.smtp_error)}")
    except (OSError, smtplib.SMTPException) as exc:
        return Check("auth", FAIL, f"AUTH failed for {username!r}: {exc}")
    return Check("auth", OK, f"accepted for {username!r}")


def _sender(server: smtplib.SMTP, settings: Settings, context: ssl.SSLContext) -> Check:
    """MAIL FROM with the envelope sender, then RSET: shows whether the relay takes mail from us."""
    sender = settings.envelope_sender
    try:
        code, reply = server.mail(sender)
        server.rset()
    except (OSError, smtplib.SMTPException) as exc:
        return Check("sender", FAIL, f"MAIL FROM:<{sender}> failed: {exc}")
    if code != 250:
        return Check("sender", FAIL, f"MAIL FROM:<{sender}> refused: {code} {_first_line(reply)}")
    return Check("sender", OK, f"MAIL FROM:<{sender}> accepted (then reset: nothing sent)")


def _first_line(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text.splitlines()[0] if text else ""
