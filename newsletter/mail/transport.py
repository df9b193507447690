"""The SMTP transport: connections (TLS, AUTH), reused for many messages, and one transaction per message.

A refusal is classified once, here: ``Permanent`` (5xx for this recipient), ``Temporary``
(4xx, a dropped connection, a timeout) or ``Abort`` (nothing can be sent: authentication,
TLS, a refused sender).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from contextlib import suppress

from newsletter.config import Settings


class Abort(Exception):
    """A problem that stops the whole run (authentication, connection impossible)."""


class Temporary(Exception):
    """A failure worth retrying: 4xx replies, dropped connections, timeouts."""


class Permanent(Exception):
    """A 5xx reply for this recipient: bounce, never retry."""


def open_smtp(settings: Settings) -> smtplib.SMTP:
    """Connect (and STARTTLS / TLS, and AUTH) as the [smtp] settings say."""
    smtp = settings.smtp
    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    try:
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
            server.ehlo()
            if smtp.security == "starttls":
                server.starttls(context=context)
                server.ehlo()
        if smtp.username:
            if not settings.smtp_password:
                raise Abort("smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not")
            server.login(smtp.username, settings.smtp_password)
    except smtplib.SMTPAuthenticationError as exc:
        raise Abort(
            f"SMTP authentication failed for {smtp.username!r}: {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise Abort(f"the SMTP server does not support what [smtp] asks for: {exc}") from None
    except ssl.SSLError as exc:
        raise Abort(
            f"TLS with {smtp.host}:{smtp.port} failed: {exc.reason or exc} (check smtp.security and smtp.ca_file)"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Temporary(f"cannot connect to {smtp.host}:{smtp.port}: {exc}") from None
    return server


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class Connection:
    """One SMTP connection, opened lazily, reused for many messages, reopened after a drop."""

    def __init__(self, settings: Settings, before_data: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.before_data = before_data
        self.server: smtplib.SMTP | None = None

    def send(self, sender: str, recipient: str, wire: bytes) -> str:
        """Send one message, given as ``wire_data`` makes it."""
        if self.server is None:
            self.server = open_smtp(self.settings)
        try:
            return transaction(self.server, sender, recipient, wire, self.before_data)
        except Temporary:
            self.close()
            raise

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.quit()
            except (OSError, smtplib.SMTPException):
                self.server.close()
            self.server = None


def transaction(
    server: smtplib.SMTP, sender: str, recipient: str, wire: bytes, before_data: Callable[[], None] | None = None
) -> str:
    """MAIL, RCPT, DATA for one recipient; return the final reply or raise Temporary / Permanent / Abort.

    When the server offers PIPELINING (RFC 2920) the three commands go out in one write, so a
    message costs two round trips instead of four. ``wire`` is the message already dot-stuffed
    and terminated (``wire_data``, ``Wire``): smtplib's per-message regex is not run.
    ``before_data`` runs before the content is sent, while the server answers the envelope
    (it records the previous acceptance: ``_Pending``).
    """
    options = " BODY=8BITMIME" if server.has_extn("8bitmime") else ""
    # both addresses were validated (config, CSV, web form): plain ASCII, no quoting needed
    commands = (f"MAIL FROM:<{sender}>{options}", f"RCPT TO:<{recipient}>", "DATA")
    try:
        if server.has_extn("pipelining"):
            server.send("".join(f"{command}\r\n" for command in commands))
            _before_data(server, before_data)  # runs while the server answers
            replies = [server.getreply() for _ in commands]
        else:
            _before_data(server, before_data)
            replies = []
            for command in commands:
                server.putcmd(command)
                replies.append(server.getreply())
                if replies[-1][0] not in (250, 251):
                    break
        _check_envelope(server, sender, replies)
        server.send(wire)
        code, reply = server.getreply()
        if code != 250:
            _reset(server)
            raise _refused(code, reply)
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code, exc.smtp_error) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Temporary(f"connection lost: {exc or type(exc).__name__}") from None
    return f"{code} {_text(reply)}"


def _before_data(server: smtplib.SMTP, before_data: Callable[[], None] | None) -> None:
    if before_data is None:
        return
    try:
        before_data()
    except Abort:
        server.close()  # mid-transaction: drop the session so the server discards the message
        raise


def _check_envelope(server: smtplib.SMTP, sender: str, replies: list[tuple[int, bytes]]) -> None:
    """Raise for the first refused step of MAIL, RCPT, DATA; return when DATA said 354."""
    if len(replies) == 3 and replies[2][0] == 354 and all(code in (250, 251) for code, _ in replies[:2]):
        return
    if len(replies) == 3 and replies[2][0] == 354:
        # a pipelined DATA the server accepted although MAIL or RCPT failed: end it empty
        server.send(b".\r\n")
        server.getreply()
    _reset(server)
    (mail_code, mail_reply), *rest = replies
    if mail_code != 250:
        if mail_code >= 500:
            raise Abort(
                f"the server refused the sender {sender}: {mail_code} {_text(mail_reply)} (check sender.address)"
            )
        raise Temporary(f"{mail_code} {_text(mail_reply)}")
    code, reply = rest[0] if rest[0][0] not in (250, 251) else rest[1]
    raise _refused(code, reply)


def _refused(code: int, reply: bytes | str) -> Exception:
    """A refusal of one message: permanent for 5xx, temporary otherwise."""
    return (Permanent if code >= 500 else Temporary)(f"{code} {_text(reply)}")


def _reset(server: smtplib.SMTP) -> None:
    with suppress(OSError, smtplib.SMTPException):
        server.rset()
