"""The SMTP transport: connections (TLS, AUTH), reused for many messages, and one transaction per message.

A refusal is classified once, here: ``Permanent`` (5xx for this recipient), ``Unsendable``
(an address this server cannot take, never tried), ``Temporary`` (any other 4xx: the
session goes on after RSET), ``Dropped`` (the connection is gone: a 421, a reset, a
timeout) or ``Abort`` (nothing can be sent: authentication, TLS, a refused sender).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from newsletter.config import Settings
from newsletter.mail.address import wire_address

OPEN_TIMEOUT = 20.0  # seconds at most for connecting, the greeting, TLS and AUTH, whatever smtp.timeout says


class Abort(Exception):
    """A problem that stops the whole run (authentication, TLS, a refused sender)."""


class Temporary(Exception):
    """A failure worth retrying: 4xx replies, dropped connections, timeouts."""


class Dropped(Temporary):
    """The connection is gone (reset, timeout, 421): reopen it before the next message."""


class CannotConnect(Temporary):
    """A connection could not be opened (refused, 421 at the greeting, timeout); no recipient was tried."""


class Permanent(Exception):
    """A 5xx reply for this recipient: bounce, never retry."""


class Unsendable(Permanent):
    """An address this server cannot take (a non-ASCII local part without SMTPUTF8): never sent, not a bounce."""


@lru_cache(maxsize=8)
def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The TLS context of a run, built once (it costs tens of milliseconds of CPU)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def open_smtp(settings: Settings) -> smtplib.SMTP:
    """Connect (and STARTTLS / TLS, and AUTH) as the [smtp] settings say.

    Opening waits at most OPEN_TIMEOUT seconds for each reply; the session then uses smtp.timeout.
    """
    smtp = settings.smtp
    wait = min(smtp.timeout, OPEN_TIMEOUT)
    try:
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=wait, context=tls_context(smtp.ca_file)
            )
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=wait)
            server.ehlo()
            if smtp.security == "starttls":
                server.starttls(context=tls_context(smtp.ca_file))
                server.ehlo()
        if smtp.username:
            if not settings.smtp_password:
                raise Abort("smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not")
            server.login(smtp.username, settings.smtp_password)
        if server.sock is not None:
            server.sock.settimeout(smtp.timeout)
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
    except smtplib.SMTPResponseException as exc:
        raise CannotConnect(
            f"cannot connect to {smtp.host}:{smtp.port}: {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            raise CannotConnect(f"cannot connect to {smtp.host}:{smtp.port}: no answer within {wait:g} s") from None
        raise CannotConnect(f"cannot connect to {smtp.host}:{smtp.port}: {exc}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise CannotConnect(f"cannot connect to {smtp.host}:{smtp.port}: {exc or type(exc).__name__}") from None
    return server


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class Connection:
    """One SMTP connection, opened lazily, reused for many messages, reopened after a drop."""

    def __init__(self, settings: Settings, before_data: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.before_data = before_data
        self.server: smtplib.SMTP | None = None
        self.failures = 0  # failed openings in a row, for the sending engine's backoff

    @property
    def is_open(self) -> bool:
        return self.server is not None and self.server.sock is not None

    def open(self) -> None:
        """Open the connection if it is not; raise CannotConnect or Abort."""
        if not self.is_open:
            self.close()
            self.server = open_smtp(self.settings)

    def send(
        self, sender: str, recipient: str, wire: bytes, following: Callable[[], str | None] | None = None
    ) -> str:
        """Send one message, given as ``wire_data`` makes it; a refusal keeps the session (RSET).

        The recipient's domain goes in A-labels; one without an IDNA form is ``Unsendable``.
        ``following`` names this connection's next recipient when one is at hand: its envelope
        then goes out behind this message's content (``transaction``).
        """
        try:
            recipient = wire_address(recipient)
        except ValueError as exc:
            raise Unsendable(f"not sent: {exc}") from None
        if self.server is not None and chained(self.server) not in (None, recipient):
            self.close()  # an envelope for somebody else is open on the server: start afresh
        self.open()
        assert self.server is not None
        try:
            return transaction(self.server, sender, recipient, wire, self.before_data, following)
        except Dropped:
            self.close()
            raise

    def close(self) -> None:
        """QUIT and close; with an envelope open on the server (it may be waiting for content), close at once."""
        if self.server is not None:
            try:
                if chained(self.server) is not None:
                    self.server.close()  # a QUIT now would be read as message content
                elif self.server.sock is not None:
                    self.server.quit()
            except (OSError, smtplib.SMTPException):
                self.server.close()
            self.server = None


def _host(server: smtplib.SMTP) -> str:
    """The host the connection was opened to, for messages (smtplib keeps it as ``_host``; typeshed omits it)."""
    return str(getattr(server, "_host", ""))


def transaction(
    server: smtplib.SMTP,
    sender: str,
    recipient: str,
    wire: bytes,
    before_data: Callable[[], None] | None = None,
    following: Callable[[], str | None] | None = None,
) -> str:
    """MAIL, RCPT, DATA for one recipient; return the final reply or raise Temporary / Permanent / Abort.

    When the server offers PIPELINING (RFC 2920) the three commands go out in one write, and
    the next recipient's envelope (``following``, when one is at hand) goes out in the same
    write as this message's content, which RFC 2920 allows as the first "command" of a group:
    a message then costs one round trip instead of four. ``wire`` is the message already
    dot-stuffed and terminated (``wire_data``, ``Wire``): smtplib's per-message regex is not run.
    ``before_data`` runs before the content is sent, while the server answers the envelope
    (it records the previous acceptance). An address with a non-ASCII local part goes with
    SMTPUTF8 (RFC 6531) when the server offers it, and is ``Unsendable`` otherwise.
    """
    commands = _envelope(server, sender, recipient)
    try:
        if chained(server) == recipient:  # its envelope went out behind the previous message
            setattr(server, _CHAINED, None)
            _before_data(server, before_data)
            replies = [server.getreply() for _ in commands]
        elif server.has_extn("pipelining"):
            reset = getattr(server, _RSET_DUE, False)  # the RSET after a refusal goes out with this envelope
            server.send((("RSET\r\n" if reset else "") + "".join(commands)).encode("utf-8"))
            _before_data(server, before_data)  # runs while the server answers
            if reset:
                setattr(server, _RSET_DUE, False)
                if (answer := server.getreply())[0] != 250:
                    raise Dropped(f"RSET refused: {answer[0]} {_text(answer[1])}")
            replies = [server.getreply() for _ in commands]
        else:
            _before_data(server, before_data)
            replies = []
            for command in commands:
                server.send(command.encode("utf-8"))
                replies.append(server.getreply())
                if replies[-1][0] not in (250, 251):
                    break
        _check_envelope(server, sender, replies)
        server.send(wire + _chain(server, sender, following))
        code, reply = server.getreply()
        if code != 250:  # the end of the data ends the transaction (RFC 5321, 4.1.1.4): no RSET needed
            if code in (421, -1):
                server.close()
            raise _refused(code, reply)
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code, exc.smtp_error) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Dropped(f"connection lost: {exc or type(exc).__name__}") from None
    return f"{code} {_text(reply)}"


def _envelope(server: smtplib.SMTP, sender: str, recipient: str) -> list[str]:
    """MAIL, RCPT and DATA for one recipient (domains already in A-labels); Unsendable if it needs SMTPUTF8 the server lacks."""
    options = " BODY=8BITMIME" if server.has_extn("8bitmime") else ""
    if not (recipient.isascii() and sender.isascii()):
        if not server.has_extn("smtputf8"):
            raise Unsendable(
                f"not sent: {recipient} has a non-ASCII local part, which needs SMTPUTF8 (RFC 6531); "
                f"the server {_host(server)} does not offer it"
            )
        options += " SMTPUTF8"
    # both addresses were validated (config, CSV, web form), domains in A-labels: no quoting needed
    return [f"MAIL FROM:<{sender}>{options}\r\n", f"RCPT TO:<{recipient}>\r\n", "DATA\r\n"]


_CHAINED = "newsletter_chained"


def chained(server: smtplib.SMTP) -> str | None:
    """The recipient whose envelope went out behind the last message's content, its replies not yet read."""
    return getattr(server, _CHAINED, None)


def _chain(server: smtplib.SMTP, sender: str, following: Callable[[], str | None] | None) -> bytes:
    """The next recipient's envelope, to send behind this content; empty when there is none or it must go on its own."""
    if following is None or not server.has_extn("pipelining"):
        return b""
    if (email := following()) is None:
        return b""
    try:
        recipient = wire_address(email)
        commands = _envelope(server, sender, recipient)
    except (ValueError, Unsendable):  # it fails on its own turn, with its reason
        return b""
    setattr(server, _CHAINED, recipient)
    return "".join(commands).encode("utf-8")


def _before_data(server: smtplib.SMTP, before_data: Callable[[], None] | None) -> None:
    if before_data is None:
        return
    try:
        before_data()
    except BaseException:
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
    worst = next(code for code, _ in replies if code not in (250, 251, 354))
    _reset(server, worst)
    (mail_code, mail_reply), *rest = replies
    if mail_code != 250:
        if mail_code >= 500:
            raise Abort(
                f"the server refused the sender {sender}: {mail_code} {_text(mail_reply)} (check sender.bounce_address and sender.address)"
            )
        raise _refused(mail_code, mail_reply)
    code, reply = rest[0] if rest[0][0] not in (250, 251) else rest[1]
    raise _refused(code, reply)


def _refused(code: int, reply: bytes | str) -> Exception:
    """A refusal of one message: permanent for 5xx, a dropped connection for 421 or -1, temporary otherwise."""
    if code >= 500:
        return Permanent(f"{code} {_text(reply)}")
    if code in (421, -1):
        return Dropped(f"{code} {_text(reply)}")
    return Temporary(f"{code} {_text(reply)}")


_RSET_DUE = "newsletter_rset_due"


def _reset(server: smtplib.SMTP, code: int) -> None:
    """Keep the session for the next message (RSET); close it when the server said it is closing or RSET fails.

    With PIPELINING the RSET waits to go out in one write with the next envelope (RFC 2920
    allows it anywhere in a group): a refusal then costs no round trip of its own.
    """
    if code in (421, -1):
        server.close()
        return
    if server.has_extn("pipelining"):
        setattr(server, _RSET_DUE, True)
        return
    try:
        server.rset()
    except (OSError, smtplib.SMTPException):
        server.close()
