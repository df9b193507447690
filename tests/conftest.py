"""Shared fixtures: a small event library, settings in tmp_path, a real SMTP server on 127.0.0.1,
and the state database on both backends.

The modules in ``BOTH_BACKENDS`` (the ledger, web and delivery tests) run every test that
builds settings twice: ``[sqlite]`` on a file in tmp_path, ``[postgresql]`` on a fresh
database (CREATE DATABASE per test) of one real PostgreSQL server started for the session
(tests/pgserver.py; missing PostgreSQL fails under CI=true, skips elsewhere). The settings
then carry ``database.url`` and NEWSLETTER_DATABASE_URL is set for subprocesses.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import os
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from newsletter.config import Settings, load_settings
from tests.pgserver import PostgresServer, running_server

BOTH_BACKENDS = {"test_delivery", "test_retention", "test_web", "test_web_preferences"}

SECTION_TEXT = (
    "The {n} paragraph tells the story in plain words, with enough detail to be worth reading "
    "over breakfast and short enough to finish before the coffee cools down. "
) * 3


def event_text(
    title: str = "The first event",
    when: str = "2012-06-25",
    summary: str = "Something true and interesting happened on this day.",
    first: str | None = None,
    subject: str = "politics",
    extra_front: str = "",
    sections: int = 3,
) -> str:
    """Return a valid event file (about 250 words) that tests can change field by field."""
    year, month, day = when.removesuffix(" BC").split("-")
    import calendar

    label = f"{calendar.month_name[int(month)]} {int(day)}, {int(year)}{' BC' if when.endswith('BC') else ''}"
    first = first if first is not None else f"On {label}, the thing happened. " + SECTION_TEXT.format(n="first")
    body = [f"## What happened\n\n{first}\n"]
    names = ["Why it mattered", "What followed", "How it is remembered", "A last word"]
    for index in range(sections - 1):
        body.append(f"## {names[index]}\n\n{SECTION_TEXT.format(n=names[index].lower())}\n")
    return textwrap.dedent(
        f"""\
        ---
        title: {title}
        date: {when}
        summary: {summary}
        subject: {subject}
        tags: [history, test]
        fun_fact: A small and surprising true thing.
        reading:
          - title: A Real Book
            author: A. Real Author
        sources:
          - "Wikipedia: Test event"
        {extra_front}
        ---

        """
    ) + "\n".join(body)


def strict_html(text: str):
    """Parse HTML with html5lib in strict mode: any parse error (bad nesting, stray tag, bad doctype) raises."""
    import html5lib

    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


def write_event(folder: Path, name: str, text: str) -> Path:
    """Write an event file under folder/MM/ and return its path."""
    path = folder / name[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_library(folder: Path) -> Path:
    """Write the small valid library: June 24, two events on June 25, Feb 29, and Dec 31."""
    write_event(folder, "06-24-first-thing.md", event_text("A June 24 event", "1995-06-24"))
    write_event(folder, "06-25-syrian-defection.md", event_text("Syrian officers defect", "2012-06-25"))
    write_event(folder, "06-25-korean-war-begins.md", event_text("Korean War begins", "1950-06-25", subject="war"))
    write_event(folder, "02-29-leap-day-event.md", event_text("A leap-day event", "1940-02-29"))
    write_event(folder, "12-31-year-end.md", event_text("A year-end event", "1999-12-31"))
    return folder


@pytest.fixture
def event_folder(tmp_path: Path) -> Path:
    """A small valid library: June 24, two events on June 25, Feb 29, and Dec 31."""
    return write_library(tmp_path / "events")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of BOTH_BACKENDS that build settings once per backend (ids [sqlite], [postgresql])."""
    if metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_BACKENDS and "make_settings" in metafunc.fixturenames:
        if "database_url" not in metafunc.fixturenames:
            metafunc.fixturenames.append("database_url")  # make_settings asks for it by name
        metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (tests/pgserver.py)."""
    with running_server() as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """'' (SQLite in paths.state) or the URL of a fresh, empty PostgreSQL database (parametrized: see above).

    On PostgreSQL, no SQLite state file may appear anywhere in tmp_path: every table lives in the server.
    """
    if getattr(request, "param", "sqlite") == "sqlite":
        yield ""
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    yield server.fresh_database(f"t{os.getpid()}_{next(_databases)}")
    assert not list(tmp_path.rglob("newsletter.sqlite3")), "a PostgreSQL test wrote a SQLite state file"


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Build Settings from a TOML snippet written to tmp_path/newsletter.toml, isolated from the environment.

    With ``database_url`` among the test's fixtures (a module of BOTH_BACKENDS), the settings and the
    environment of subprocesses (NEWSLETTER_DATABASE_URL) name that database.
    """
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else ""
    if url:
        monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)

    def build(toml: str = "", env: dict[str, str] | None = None, **paths: Path) -> Settings:
        lines = [textwrap.dedent(toml)]
        if paths:
            lines.append("[paths]")
            lines += [f'{key} = "{value}"' for key, value in paths.items()]
        config = tmp_path / "newsletter.toml"
        config.write_text("\n".join(lines), encoding="utf-8")
        env = dict(env or {"NEWSLETTER_SECRET": "test-secret"})
        if url:
            env.setdefault("NEWSLETTER_DATABASE_URL", url)
        return load_settings(config, env=env)

    return build


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `newsletter` subprocess: ours without NEWSLETTER_*, but with the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    if os.environ.get("NEWSLETTER_DATABASE_URL"):
        env["NEWSLETTER_DATABASE_URL"] = os.environ["NEWSLETTER_DATABASE_URL"]
    return env | extra


@pytest.fixture
def settings(make_settings: Callable[..., Settings], event_folder: Path, tmp_path: Path) -> Settings:
    """Settings on the small library, with state and public folders in tmp_path."""
    return make_settings(events=event_folder, state=tmp_path / "var", public=tmp_path / "public")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    """One message as the server accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted message, and can be told to misbehave.

    ``replies`` is a queue of SMTP replies for the next DATA commands (e.g. "451 try later");
    when it is empty the message is accepted with 250.
    """

    messages: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)  # address -> reply at RCPT
    delay: float = 0.0  # seconds to wait before answering DATA (a slow server)
    drop: int = 0  # close the connection instead of answering the next N DATA commands
    pipelining: bool = True  # advertise PIPELINING (RFC 2920), as Postfix and most relays do
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:  # noqa: N802
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, rcpt_options) -> str:  # noqa: N802
        if address.lower() in self.reject:
            return self.reject[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope: Envelope) -> str:  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            if self.drop:
                self.drop -= 1
                server.transport.close()
                return "421 closing"
            if self.replies:
                return self.replies.pop(0)
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content)
            )
        return "250 Message accepted"

    def recipients(self) -> list[str]:
        with self.lock:
            return [rcpt for message in self.messages for rcpt in message.rcpt_tos]


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, plain, no auth."""
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()
