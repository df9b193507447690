"""The web side: one-click unsubscribe, double opt-in sign-up, and the public folder, in one process.

A Starlette application served by uvicorn. All state lives in the SQLite state database.
Forms carry a CSRF token (double-submit cookie); every input is validated; errors are
friendly pages, never tracebacks.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import smtplib
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from urllib.parse import urljoin

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from newsletter import state, tokens
from newsletter.config import Settings
from newsletter.delivery import Abort, Temporary, open_smtp
from newsletter.render import list_id
from newsletter.signing import signer
from newsletter.subscribers import check_address, valid_zone

log = logging.getLogger(__name__)
CSRF_COOKIE = "csrf"


class WebApp:
    """The routes, bound to one Settings and a clock (injectable for tests)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.secret = settings.signing_secret()
        self.list_id = list_id(settings)
        self.pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(settings.paths.templates)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def connect(self) -> sqlite3.Connection:
        return state.connect(self.settings.paths.state)

    def page(self, name: str, status: int = 200, csrf: str | None = None, **context: object) -> HTMLResponse:
        """Render one of templates/web/form_*.html in the site's look."""
        site = {"title": self.settings.newsletter.title, "base_url": self.settings.newsletter.base_url}
        body = self.pages.get_template(f"web/form_{name}.html").render(site=site, csrf=csrf or "", **context)
        response = HTMLResponse(body, status_code=status)
        if csrf:
            response.set_cookie(
                CSRF_COOKIE,
                csrf,
                httponly=True,
                samesite="strict",
                secure=self.settings.newsletter.base_url.startswith("https"),
            )
        return response

    # Unsubscribe -------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        address = tokens.read_token(self.secret, request.query_params.get("token", ""), self.list_id)
        if address is None:
            return self.page(
                "message",
                400,
                heading="This link is not valid",
                text="The unsubscribe link is incomplete or has been altered. Please use the link from one of our emails.",
            )
        if request.method == "GET":
            return self.page(
                "unsubscribe", csrf=secrets.token_urlsafe(24), address=address, token=request.query_params["token"]
            )
        form = await request.form()
        one_click = form.get("List-Unsubscribe") == "One-Click"
        if not one_click and not self._csrf_ok(request, form.get("csrf")):
            return self.page(
                "message",
                403,
                heading="Please try again",
                text="This form has expired. Go back, reload the page and press the button again.",
            )
        conn = self.connect()
        try:
            state.suppress(conn, address, "unsubscribed", "one-click" if one_click else "web form")
        finally:
            conn.close()
        log.info("unsubscribed %s (%s)", address, "one-click" if one_click else "form")
        if one_click:
            return PlainTextResponse("", status_code=200)  # RFC 8058: mailbox providers need no page
        return self.page(
            "message",
            heading="You are unsubscribed",
            text=f"{address} will get no more emails from us. We are sorry to see you go.",
        )

    # Sign-up -----------------------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page("subscribe", csrf=secrets.token_urlsafe(24), error="", values={})
        form = await request.form()
        values = {key: str(form.get(key, "")).strip() for key in ("email", "name", "timezone")}
        if not self._csrf_ok(request, form.get("csrf")):
            return self.page(
                "subscribe",
                403,
                csrf=secrets.token_urlsafe(24),
                error="This form has expired; please send it again.",
                values=values,
            )
        error, address = self._validate(values)
        if error:
            return self.page("subscribe", 400, csrf=secrets.token_urlsafe(24), error=error, values=values)
        if not self._allow_attempt(address):
            return self.page(
                "message",
                429,
                heading="Too many requests",
                text="We have already sent several confirmation emails to this address in the last hour. Please check your inbox, or try again later.",
            )
        self._send_confirmation(address, values["name"], values["timezone"])
        return self.page(
            "message",
            heading="Check your inbox",
            text=f"If {address} can receive mail, a confirmation link is on its way. Your subscription starts when you open it.",
        )

    def _validate(self, values: dict[str, str]) -> tuple[str, str]:
        try:
            address = check_address(values["email"])
        except ValueError as exc:
            return f"That email address does not look right: {exc}", ""
        if len(values["name"]) > 100 or any(ord(ch) < 32 for ch in values["name"]):
            return "Please give a name of at most 100 characters, or none.", ""
        if values["timezone"] and not valid_zone(values["timezone"]):
            return "Please choose a time zone from the list, such as Europe/Paris.", ""
        return "", address

    def _allow_attempt(self, address: str) -> bool:
        """Count sign-up emails per address in the last hour (stored in SQLite, so restarts do not reset it)."""
        now, key = self.clock(), address.lower()
        conn = self.connect()
        try:
            with state.transaction(conn):
                conn.execute("DELETE FROM signup_attempts WHERE at < ?", (now - 3600,))
                count = conn.execute("SELECT COUNT(*) FROM signup_attempts WHERE email = ?", (key,)).fetchone()[0]
                if count >= self.settings.web.signup_limit:
                    return False
                conn.execute("INSERT INTO signup_attempts VALUES (?, ?)", (key, now))
        finally:
            conn.close()
        return True

    def _send_confirmation(self, address: str, name: str, zone: str) -> None:
        expires = int(self.clock() + self.settings.web.confirm_hours * 3600)
        token = tokens.make_token(self.secret, address, self.list_id, purpose="confirm", expires=expires)
        link = urljoin(self.settings.newsletter.base_url, f"confirm?token={token}")
        conn = self.connect()
        try:
            conn.execute(
                "INSERT INTO pending_signups (email, name, timezone, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(email) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, created_at = excluded.created_at",
                (address.lower(), name, zone, state.utcnow_text()),
            )
        finally:
            conn.close()
        message = self._confirmation_message(address, link)
        try:
            server = open_smtp(self.settings)
            try:
                server.sendmail(self.settings.sender.address, [address], message)
            finally:
                server.quit()
        except (Abort, Temporary, smtplib.SMTPException, OSError) as exc:
            log.error("could not send the confirmation email to %s: %s", address, exc)

    def _confirmation_message(self, address: str, link: str) -> bytes:
        settings = self.settings
        message = EmailMessage()
        message["From"] = formataddr((settings.sender.name, settings.sender.address))
        message["To"] = address
        message["Subject"] = f"Confirm your subscription to {settings.newsletter.title}"
        message["Date"] = format_datetime(time_now(self.clock))
        message["Message-ID"] = make_msgid(domain=settings.sender_domain)
        hours = f"{settings.web.confirm_hours:g}"
        message.set_content(
            f"Hello,\n\nsomeone (we hope you) asked to receive {settings.newsletter.title}, one story from history "
            f"every morning, at this address.\n\nTo confirm, open this link within {hours} hours:\n\n{link}\n\n"
            "If it was not you, ignore this email: you will not be subscribed.\n"
        )
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        sign = signer(settings)
        return sign(data) if sign else data

    async def confirm(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        address = tokens.read_token(self.secret, token, self.list_id, purpose="confirm", now=self.clock())
        if address is None:
            return self.page(
                "message",
                400,
                heading="This link has expired or is not valid",
                text="Confirmation links work for a limited time. Please sign up again to get a fresh one.",
            )
        conn = self.connect()
        try:
            with state.transaction(conn):
                row = conn.execute(
                    "SELECT name, timezone FROM pending_signups WHERE email = ?", (address.lower(),)
                ).fetchone()
                name, zone = (row[0], row[1]) if row else ("", "")
                conn.execute(
                    "INSERT INTO web_subscribers (email, name, timezone, confirmed_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(email) DO UPDATE SET name = excluded.name, timezone = excluded.timezone",
                    (address.lower(), name, zone, state.utcnow_text()),
                )
                conn.execute("DELETE FROM pending_signups WHERE email = ?", (address.lower(),))
                conn.execute("DELETE FROM suppressions WHERE email = ? AND reason = 'unsubscribed'", (address.lower(),))
        finally:
            conn.close()
        log.info("confirmed %s", address)
        return self.page(
            "message",
            heading="You are subscribed",
            text=f"Welcome! The next edition goes to {address} tomorrow morning.",
        )

    def _csrf_ok(self, request: Request, submitted: object) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and isinstance(submitted, str) and hmac.compare_digest(cookie, submitted)


def time_now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the application: the three forms, then the public folder as static files."""
    web = WebApp(settings, clock)
    settings.paths.public.mkdir(parents=True, exist_ok=True)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return web.page("message", exc.status_code, heading="Not here", text="There is no page at this address.")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error while serving %s", request.url.path)
        return web.page("message", 500, heading="Something went wrong", text="Please try again in a moment.")

    routes = [
        Route("/unsubscribe", web.unsubscribe, methods=["GET", "POST"]),
        Route("/subscribe", web.subscribe, methods=["GET", "POST"]),
        Route("/confirm", web.confirm, methods=["GET"]),
        Mount("/", StaticFiles(directory=str(settings.paths.public), html=True)),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the application under uvicorn, a production-grade ASGI server."""
    import uvicorn

    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=settings.newsletter.log_level.lower(), server_header=False
    )
