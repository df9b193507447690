"""The web side: one-click unsubscribe, double opt-in sign-up, and the public folder, in one process.

A Starlette application served by uvicorn. All state lives in the SQLite state database.
Forms carry a CSRF token (double-submit cookie); every input is validated; errors are
friendly pages, never tracebacks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from typing import cast
from urllib.parse import quote, urljoin

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from newsletter import archive, state, storage, tokens
from newsletter.config import Settings
from newsletter.mail.transport import Abort, Connection, Permanent, Temporary
from newsletter.mail.wire import wire_data
from newsletter.render import list_id
from newsletter.signing import signer
from newsletter.storage import Database, Row
from newsletter.subscribers import Entry, check_address, find, preference_problem, zone_choices

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

    @contextmanager
    def database(self) -> Iterator[Database]:
        """A connection to the state database for one request, closed afterwards."""
        conn = storage.connect(self.settings)
        try:
            yield conn
        finally:
            conn.close()

    def page(self, name: str, status: int = 200, csrf: str | None = None, **context: object) -> HTMLResponse:
        """Render one of templates/web/form_*.html in the site's look."""
        site = {
            "title": self.settings.newsletter.title,
            "base_url": self.settings.newsletter.base_url,
            "description": "One story from history for every day of the year, by email every morning.",
        }
        context.setdefault("preferences_url", "")  # a subscriber's pages link to their preferences
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

    def error_page(self, status: int, text: str) -> HTMLResponse:
        """A friendly page for an HTTP error."""
        heading = "That was too much" if status == 413 else "That did not work"
        return self.page("message", status, heading=heading, text=text)

    # Unsubscribe -------------------------------------------------------------

    def _reader(self, token: str, purpose: str = "unsubscribe") -> str | None:
        """The address a link token stands for: by its public id, or in the old form during the grace period.

        None for a token we did not make; '' for one of ours whose reader is no longer on the list.
        """
        with self.database() as conn:
            public_id = tokens.read_link_token(self.secret, self.list_id, token, purpose)
            if public_id is not None:
                row = state.find_subscriber_by_public_id(conn, public_id)
                return str(row["address"]) if row is not None else ""
            address = tokens.read_token(self.secret, token, self.list_id, purpose=purpose)
            return address if address is not None and self._legacy_ok(conn) else None

    def _legacy_ok(self, conn: Database) -> bool:
        """Old-form links (the address inside) are read for web.legacy_link_days after the new form began."""
        since = state.link_tokens_since(conn)
        return tokens.legacy_accepted(since, time_now(self.clock), self.settings.web.legacy_link_days)

    def _sample_page(self, request: Request) -> Response | None:
        """The page of a link from a sample or a test copy to an address not on the list (it changes nothing); else None."""
        token = request.query_params.get("token", "")
        if not tokens.is_sample_token(self.secret, self.list_id, token, "unsubscribe"):
            return None
        if request.method == "POST":
            return PlainTextResponse("", status_code=200)  # a mailbox provider's one-click: nothing to do
        return self.page(
            "message",
            heading="This link is from a test copy",
            text="That email went to an address that is not on our list, so its links open nothing. "
            "In each reader's own email, this link opens their own page.",
        )

    async def unsubscribe(self, request: Request) -> Response:
        address = await run_in_threadpool(self._reader, request.query_params.get("token", ""))
        if address is None:
            return self._sample_page(request) or self.page(
                "message",
                400,
                heading="This link is not valid",
                text="The unsubscribe link is incomplete or has been altered. Please use the link from one of our emails.",
            )
        if not address:  # one of our links, its reader no longer on the list (removed, or erased)
            if request.method == "POST":
                return PlainTextResponse("", status_code=200)
            return self.page(
                "message",
                heading="You are not on our list",
                text="The address of this link is no longer on our list: we send it nothing.",
            )
        token = request.query_params["token"]
        if request.method == "GET":
            return self.page(
                "unsubscribe",
                csrf=self._csrf(request),
                address=address,
                token=token,
                preferences_url=preferences_link(token),
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
        await run_in_threadpool(self._unsubscribe, address, "one-click" if one_click else "web form")
        log.info("unsubscribed %s (%s)", address, "one-click" if one_click else "form")
        if one_click:
            return PlainTextResponse("", status_code=200)  # RFC 8058: mailbox providers need no page
        return self.page(
            "message",
            heading="You are unsubscribed",
            text=f"{address} will get no more emails from us. We are sorry to see you go.",
            preferences_url=preferences_link(token),
        )

    def _unsubscribe(self, address: str, how: str) -> None:
        with self.database() as conn, conn.transaction():
            state.unsubscribe(conn, address, how)

    # Preferences -------------------------------------------------------------

    async def preferences(self, request: Request) -> Response:
        """The reader's own page: name, time zone, daily or weekly (and the weekday); unsubscribe one click away."""
        token = request.query_params.get("token", "")
        address = await run_in_threadpool(self._reader, token)  # the unsubscribe link's token opens this page too
        if address is None:
            return self._sample_page(request) or self.page(
                "message",
                400,
                heading="This link is not valid",
                text="The preferences link is incomplete or has been altered. Please use the link from one of our emails.",
            )
        entry = await run_in_threadpool(self._entry, address)
        if entry is None:
            return self.page(
                "message",
                404,
                heading="We have no subscription for this address",
                text=f"{address or 'This address'} is not on our list. You can sign up again on the subscribe page.",
            )
        values = {
            "name": entry.name,
            "timezone": entry.timezone,
            "frequency": entry.frequency,
            "weekday": entry.weekday,
        }
        if request.method == "GET":
            return self._preferences_page(request, entry, token, values)
        form = await request.form()
        values = {key: str(form.get(key, "")).strip() for key in values}
        values["weekday"] = values["weekday"].lower() or entry.weekday
        if not self._csrf_ok(request, form.get("csrf")):
            return self._preferences_page(
                request, entry, token, values, 403, "This form has expired; please save it again."
            )
        problem = preference_problem(values["name"], values["timezone"], values["frequency"], values["weekday"])
        if problem:
            return self._preferences_page(request, entry, token, values, 400, problem)
        await run_in_threadpool(self._save_preferences, address, values)
        log.info("preferences of %s: %s", address, values["frequency"])
        return self._preferences_page(request, entry, token, values, saved=True)

    def _preferences_page(
        self, request: Request, entry: Entry, token: str, values: dict[str, str],
        status: int = 200, error: str = "", saved: bool = False,
    ) -> HTMLResponse:  # fmt: skip
        return self.page(
            "preferences", status, csrf=self._csrf(request), entry=entry, token=token, values=values,
            error=error, saved=saved, zones=zone_choices(), weekdays=state.WEEKDAYS,
            preferences_url=preferences_link(token),
        )  # fmt: skip

    def _entry(self, address: str) -> Entry | None:
        with self.database() as conn:
            return find(conn, address)

    def _save_preferences(self, address: str, values: dict[str, str]) -> None:
        with self.database() as conn:
            state.update_preferences(conn, address, **values)

    # Sign-up -----------------------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page("subscribe", csrf=self._csrf(request), error="", values={}, zones=zone_choices())
        form = await request.form()
        values = {key: str(form.get(key, "")).strip() for key in ("email", "name", "timezone")}
        if not self._csrf_ok(request, form.get("csrf")):
            return self.page(
                "subscribe",
                403,
                csrf=self._csrf(request),
                error="This form has expired; please send it again.",
                values=values,
                zones=zone_choices(),
            )
        error, address = self._validate(values)
        if error:
            return self.page(
                "subscribe", 400, csrf=self._csrf(request), error=error, values=values, zones=zone_choices()
            )
        if not await run_in_threadpool(self._allow_attempt, address):
            return self.page(
                "message",
                429,
                heading="Too many requests",
                text="We have already sent several confirmation emails to this address in the last hour. Please check your inbox, or try again later.",
            )
        if not await run_in_threadpool(self._send_confirmation, address, values["name"], values["timezone"]):
            return self.page(
                "message",
                503,
                heading="Please try again in a few minutes",
                text="We could not send the confirmation email just now. Nothing was saved; please sign up again shortly.",
            )
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
        return preference_problem(values["name"], values["timezone"]), address

    def _allow_attempt(self, address: str) -> bool:
        """Count sign-up emails per address in the last hour (stored in SQLite, so restarts do not reset it)."""
        now, key = self.clock(), address.lower()
        with self.database() as conn, conn.transaction():
            conn.execute("DELETE FROM signup_attempts WHERE at < ?", (now - 3600,))
            count = conn.execute("SELECT COUNT(*) FROM signup_attempts WHERE email = ?", (key,)).fetchone()[0]
            if count >= self.settings.web.signup_limit:
                return False
            conn.execute("INSERT INTO signup_attempts VALUES (?, ?)", (key, now))
        return True

    def _send_confirmation(self, address: str, name: str, zone: str) -> bool:
        """Save the request under its own link and mail the link; False if the mail server could not take it.

        A refusal of the address itself (5xx) still returns True: the page must not reveal
        which addresses can receive mail.
        """
        token = tokens.make_link_token(self.secret, self.list_id, secrets.token_hex(16), "confirm")
        with self.database() as conn, conn.transaction():
            conn.execute("DELETE FROM signup_requests WHERE created_at < ?", (self._cutoff(),))
            conn.execute(
                "INSERT INTO signup_requests (token_hash, email, name, timezone, created_at) VALUES (?, ?, ?, ?, ?)",
                (
                    token_hash(token),
                    address.lower(),
                    name,
                    zone,
                    time_now(self.clock).isoformat(timespec="seconds"),
                ),
            )
        link = urljoin(self.settings.newsletter.base_url, f"confirm?token={token}")
        connection = Connection(self.settings)
        try:
            connection.send(
                self.settings.envelope_sender, address, wire_data(self._confirmation_message(address, link))
            )
        except Permanent as exc:
            log.info("the confirmation email to %s was refused: %s", address, exc)
        except (Abort, Temporary) as exc:
            log.error("could not send the confirmation email to %s: %s", address, exc)
            with self.database() as conn:
                conn.execute("DELETE FROM signup_requests WHERE token_hash = ?", (token_hash(token),))
            return False
        finally:
            connection.close()
        return True

    def _cutoff(self) -> str:
        """Requests older than this have expired links: they are deleted."""
        hours = self.settings.web.confirm_hours + 1
        return datetime.fromtimestamp(self.clock() - hours * 3600, UTC).isoformat(timespec="seconds")

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
        """GET (and HEAD) show a page with one button and change nothing; only the button's POST confirms.

        Mail scanners and link previews fetch every link in a message: a GET must never subscribe anyone.
        """
        token = request.query_params.get("token", "")
        status, address = await run_in_threadpool(self._request_status, token)
        if status == "invalid":
            return self.page(
                "message",
                400,
                heading="This link has expired or is not valid",
                text="Confirmation links work for a limited time. Please sign up again to get a fresh one.",
            )
        if status == "used":
            return self._used_link_page()
        if request.method != "POST":
            return self.page("confirm", csrf=self._csrf(request), address=address, token=token)
        form = await request.form()
        if not self._csrf_ok(request, form.get("csrf")):
            return self.page(
                "message",
                403,
                heading="Please try again",
                text="This form has expired. Go back, reload the page and press the button again.",
            )
        outcome = await run_in_threadpool(self._confirm, token)
        log.info("confirmation of %s: %s", address, outcome)
        if outcome in ("used", "invalid"):  # used, or expired, between the page and the button
            return self._used_link_page()
        preferences_url = await run_in_threadpool(self._preferences_url_of, address)
        if outcome == "held":
            return self.page(
                "message",
                heading="Subscription confirmed, delivery on hold",
                text=f"Earlier emails to {address} were returned by its mail server as undeliverable, so we are "
                "not sending to it for now. If the address works again, reply to any of our emails and we will resume.",
                preferences_url=preferences_url,
            )
        return self.page(
            "message",
            heading="You are subscribed",
            text=f"Welcome! The next edition goes to {address} tomorrow morning.",
            preferences_url=preferences_url,
        )

    def _preferences_url_of(self, address: str) -> str:
        """The preferences link of a subscriber on the list (their own token), or '' when there is none."""
        with self.database() as conn:
            row = state.find_subscriber(conn, address)
        if row is None:
            return ""
        return preferences_link(tokens.make_link_token(self.secret, self.list_id, row["public_id"], "unsubscribe"))

    def _used_link_page(self) -> HTMLResponse:
        return self.page(
            "message",
            410,
            heading="This link has already been used",
            text="Each confirmation link works once, and not after an unsubscribe. "
            "If you want the daily email, please sign up again.",
        )

    def _open_request(self, conn: Database, token: str) -> tuple[str, Row | None]:
        """('open', the request) for a link that can still confirm; ('invalid', None) or ('used', None) otherwise.

        A new-form token names its request by a random id; an old-form one (the address and an
        expiry inside) its own request or one saved before requests were per link. A request
        the address unsubscribed after is void.
        """
        columns = "SELECT email, name, timezone, token_hash, created_at FROM signup_requests"
        if tokens.read_link_token(self.secret, self.list_id, token, "confirm") is not None:
            row = conn.execute(f"{columns} WHERE token_hash = ?", (token_hash(token),)).fetchone()
            if row is not None and row["created_at"] < self._expiry_cutoff():
                return "invalid", None
        else:
            address = tokens.read_token(self.secret, token, self.list_id, purpose="confirm", now=self.clock())
            if address is None:
                return "invalid", None
            key = address.lower()
            row = conn.execute(
                f"{columns} WHERE token_hash IN (?, ?) AND email = ?", (token_hash(token), f"legacy:{key}", key)
            ).fetchone()
        if row is None or state.unsubscribed_since(conn, row["email"], row["created_at"]):
            return "used", None
        return "open", row

    def _request_status(self, token: str) -> tuple[str, str]:
        with self.database() as conn:
            status, row = self._open_request(conn, token)
        return status, (str(row["email"]) if row is not None else "")

    def _expiry_cutoff(self) -> str:
        """A request made before this has an expired link."""
        return datetime.fromtimestamp(self.clock() - self.settings.web.confirm_hours * 3600, UTC).isoformat(
            timespec="seconds"
        )

    def _confirm(self, token: str) -> str:
        """Add the subscriber with what its own request said: 'subscribed', 'held' (a bounce holds delivery) or 'used'.

        A link confirms once: confirming retires every open request of the address, and an
        unsubscribe retires them too, so an old link can never undo a later unsubscribe. A
        confirmation lifts an earlier unsubscribe, never a bounce: only the mail server can
        tell whether the address works again.
        """
        with self.database() as conn, conn.transaction():
            status, row = self._open_request(conn, token)
            if row is None:
                return status
            key = row["email"]
            state.add_subscriber(conn, key, name=row["name"], timezone=row["timezone"], source="web", replace=True)
            conn.execute("DELETE FROM signup_requests WHERE email = ?", (key,))
            conn.execute("DELETE FROM suppressions WHERE email = ? AND reason = 'unsubscribed'", (key,))
            held = conn.execute("SELECT 1 FROM suppressions WHERE email = ?", (key,)).fetchone() is not None
            return "held" if held else "subscribed"

    def _csrf(self, request: Request) -> str:
        """The visitor's CSRF token: the one its cookie already holds, so forms open in other tabs keep working."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return (
            cookie
            if len(cookie) >= 32 and cookie.isascii() and cookie.replace("-", "").replace("_", "").isalnum()
            else secrets.token_urlsafe(24)
        )

    def _csrf_ok(self, request: Request, submitted: object) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and isinstance(submitted, str) and hmac.compare_digest(cookie, submitted)


def preferences_link(token: str) -> str:
    """The preferences page of a link token, relative to the page that links to it."""
    return "preferences?token=" + quote(token, safe="")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def time_now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


MAX_BODY = 16 * 1024  # the forms are tiny: anything larger is refused before it is read
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # no page of ours may be framed (clickjacking the unsubscribe button)
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # links carry tokens: never pass them on to another site
}
PRIVATE_PATHS = ("/unsubscribe", "/subscribe", "/confirm", "/preferences")  # pages with tokens or forms: never cached
TOO_LARGE = "The form sent more data than we accept."
TOKEN_IN_URL = re.compile(r"(token=)[^&\s]+")


class Guard:
    """ASGI middleware: security headers on every response, no caching of form pages, a body limit."""

    def __init__(self, app: ASGIApp, web: WebApp) -> None:
        self.app, self.web = app, web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"] in PRIVATE_PATHS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if private:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        length = Headers(scope=scope).get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await self.web.error_page(413, TOO_LARGE)(scope, receive, send_with_headers)
            return
        received = 0

        async def limited_receive() -> Message:  # a body sent without a length is counted as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY:
                raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited_receive, send_with_headers)


class MaskTokens(logging.Filter):
    """Keep link tokens out of the access log: each one can unsubscribe its reader (and an old-form one names them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_IN_URL.sub(r"\1...", a) if isinstance(a, str) else a for a in record.args)
        return True


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the application: the three forms, then the public folder as static files."""
    web = WebApp(settings, clock)
    settings.paths.public.mkdir(parents=True, exist_ok=True)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return web.page("message", exc.status_code, heading="Not here", text="There is no page at this address.")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error while serving %s", request.url.path)
        return web.page("message", 500, heading="Something went wrong", text="Please try again in a moment.")

    icon = archive.web_image(settings.paths.templates, archive.FAVICON_ICO)

    async def favicon(request: Request) -> Response:
        """The site icon at the address browsers ask for first, published or not."""
        return Response(icon, media_type="image/vnd.microsoft.icon", headers={"Cache-Control": "public, max-age=86400"})

    routes = [
        Route("/preferences", web.preferences, methods=["GET", "POST"]),
        Route("/unsubscribe", web.unsubscribe, methods=["GET", "POST"]),
        Route("/subscribe", web.subscribe, methods=["GET", "POST"]),
        Route("/confirm", web.confirm, methods=["GET", "POST"]),
        Route("/favicon.ico", favicon, methods=["GET", "HEAD"]),
        Mount("/", StaticFiles(directory=str(settings.paths.public), html=True)),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return web.error_page(exc.status_code, str(exc.detail))

    # Starlette calls these two only with an HTTPException, but its ExceptionHandler type takes any Exception
    http_only, http_errors = cast(ExceptionHandler, not_found), cast(ExceptionHandler, http_error)

    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, web=web)],
        exception_handlers={404: http_only, 405: http_only, 500: server_error, HTTPException: http_errors},
    )


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the application under uvicorn, a production-grade ASGI server."""
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(MaskTokens())
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=settings.newsletter.log_level.lower(), server_header=False
    )
