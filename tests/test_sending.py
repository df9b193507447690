"""The sending engine against real SMTP servers on 127.0.0.1 that misbehave: no fault stalls a send.

Each test says what the operator sees and that nobody is lost or mailed twice.
"""

import asyncio
import itertools
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from click.testing import CliRunner

from newsletter import state, storage
from newsletter.cli import cli
from newsletter.editions import send_day
from newsletter.errors import DeliveryError, RelayDown
from newsletter.ledger import Due
from newsletter.mail.wire import Wire
from newsletter.sending.engine import WorkQueue
from newsletter.subscribers import Subscriber
from tests.conftest import RecordingHandler, free_port
from tests.test_delivery import DAY, ledger_rows, subscribers_csv

READERS = [f"reader{i}@example.com" for i in range(40)]


@dataclass
class FaultyHandler(RecordingHandler):
    """A recording handler that also greylists, counts sessions, and can reset the connection during DATA."""

    greylist: set[str] = field(default_factory=set)  # addresses refused with 451 at their first RCPT
    sessions: int = 0
    reset_data: int = 0  # reset (TCP RST) the connection during the next N DATA commands

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        with self.lock:
            self.sessions += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self.lock:
            if address.lower() in self.greylist:
                self.greylist.discard(address.lower())
                return "451 4.7.1 greylisted, try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        with self.lock:
            reset = self.reset_data > 0
            self.reset_data -= reset
        if reset:
            sock = server.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.transport.abort()
            await asyncio.sleep(0)
            return "421 gone"
        return await super().handle_DATA(server, session, envelope)


class BusyController(Controller):
    """An aiosmtpd server that answers 421 at the greeting to its first ``busy`` connections."""

    def __init__(self, handler, busy=0, **kwargs):
        super().__init__(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
        self.busy = busy

    def factory(self):
        if self.busy > 0:
            self.busy -= 1
            return Busy(self.handler, **self.SMTP_kwargs)
        return super().factory()


class Busy(SMTP):
    async def _handle_client(self):
        await self.push("421 4.3.2 too busy, try later")
        self.transport.close()


@pytest.fixture
def server():
    """Start a fault-injecting SMTP server; stopped at the end of the test."""
    started = []

    def start(busy=0, port=None, **kwargs):
        handler = FaultyHandler()
        controller = BusyController(handler, busy=busy, **kwargs)
        if port:
            controller.port = port
        controller.start()
        controller.handler = handler
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def sender(make_settings, event_folder, tmp_path):
    """Settings that send to a port with a list of ``count`` readers (short timeouts and delays for tests)."""

    def build(port, count=10, smtp="", timeout=2):
        csv = subscribers_csv(tmp_path / "subscribers.csv", count)
        toml = (
            f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nretry_delay = 0.02\n'
            f"max_attempts = 4\ntimeout = {timeout}\n{smtp}"
        )
        return make_settings(
            toml, env={"NEWSLETTER_SECRET": "s"}, events=event_folder, state=tmp_path / "var", subscribers=csv
        )

    return build


def statuses(settings):
    return {email: row["status"] for email, row in ledger_rows(settings).items()}


def invoke(tmp_path, monkeypatch, *args):
    monkeypatch.setenv("NEWSLETTER_SECRET", "s")
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "newsletter.toml"), *args])
    return result.exit_code, result.stdout, result.stderr


def test_greylisting_keeps_the_session_and_everyone_gets_one_message(server, sender):
    smtp = server()
    smtp.handler.greylist = set(READERS[:10:3])  # 4 of 10 refused at their first RCPT
    settings = sender(smtp.port, count=10, smtp="connections = 1\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.failed, result.complete) == (10, 0, True)
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:10])  # each exactly once
    assert smtp.handler.sessions == 1, "a 4xx is answered with RSET, never a new connection"
    rows = ledger_rows(settings)
    assert rows["reader0@example.com"]["attempts"] == 2 and rows["reader1@example.com"]["attempts"] == 1


def test_a_refusal_that_outlasts_the_retry_window_stays_failed_and_a_later_run_sends_it(server, sender):
    smtp = server()
    smtp.handler.replies = ["451 4.3.0 come back in five minutes"] * 2
    settings = sender(smtp.port, count=3, smtp="connections = 1\nretry_window = 0\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.failed) == (1, 2) and not result.complete
    assert sorted(statuses(settings).values()) == ["delivered", "failed", "failed"]
    assert send_day(settings, DAY).delivered == 2  # the next run (the daily job's next beat) sends them
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:3])


def test_the_daily_job_retries_failed_rows_at_its_next_beat(server, sender):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from newsletter.scheduler import Daily

    smtp = server()
    smtp.handler.replies = ["451 4.7.1 greylisted"] * 4
    settings = sender(smtp.port, count=1, smtp="connections = 1\n")
    daily = Daily(settings)
    now = datetime(2026, 6, 24, 8, 5, tzinfo=ZoneInfo("UTC"))
    first = daily.beat(now)
    assert [s.failed for s in first.sends] == [1] and not first.ok
    second = daily.beat(now.replace(minute=6))
    assert [s.delivered for s in second.sends] == [1] and second.ok
    assert smtp.handler.recipients() == ["reader0@example.com"]


def test_421_at_the_greeting_reconnects_and_the_run_completes(server, sender):
    smtp = server(busy=3)
    settings = sender(smtp.port, count=8, smtp="connections = 2\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.failed) == (8, 0)
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:8])
    assert all(row["attempts"] == 1 for row in ledger_rows(settings).values()), "the relay's fault costs no attempt"


def test_a_relay_that_is_down_stops_the_run_with_exit_3_and_one_line_then_comes_back(
    server, sender, tmp_path, monkeypatch
):
    port = free_port()
    settings = sender(port, count=20)
    started = time.monotonic()
    code, out, err = invoke(tmp_path, monkeypatch, "send", "--date", DAY.isoformat())
    assert time.monotonic() - started < 60
    assert code == 3
    assert err.count("\n") == 1 and err.startswith(f"Error: cannot connect to 127.0.0.1:{port}: ")
    assert "Connection refused" in err and "stays pending" in err
    assert set(statuses(settings).values()) == {"pending"}, "nobody is marked failed because of the relay"
    smtp = server(port=port)
    assert send_day(settings, DAY).delivered == 20
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:20])


def test_the_daily_job_exits_3_when_the_relay_is_down_and_leaves_everyone_pending(sender, tmp_path, monkeypatch):
    settings = sender(free_port(), count=5)
    code, _, _ = invoke(tmp_path, monkeypatch, "run", "--once", "--now", f"{DAY.isoformat()}T07:01:00+00:00")
    assert code == 3, "a relay that is down is a 'try again later', like send's exit status"
    assert set(statuses(settings).values()) == {"pending"}


def test_a_server_that_accepts_tcp_and_never_answers_stops_the_run_quickly(sender):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshake; nobody ever says 220
        settings = sender(silent.getsockname()[1], count=50, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RelayDown, match="no answer within 0.5 s"):
            send_day(settings, DAY)
        assert time.monotonic() - started < 10
    assert set(statuses(settings).values()) == {"pending"}


def test_a_reset_during_data_resends_on_a_new_connection(server, sender):
    smtp = server()
    smtp.handler.reset_data = 2
    settings = sender(smtp.port, count=6, smtp="connections = 2\n")
    result = send_day(settings, DAY)
    assert (result.delivered, result.failed) == (6, 0)
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:6])


def test_work_is_spread_over_every_connection_even_for_a_short_list(server, sender):
    smtp = server()
    smtp.handler.delay = 0.2
    settings = sender(smtp.port, count=4, smtp="connections = 4\n")
    started = time.monotonic()
    assert send_day(settings, DAY).delivered == 4
    assert smtp.handler.sessions == 4
    assert time.monotonic() - started < 0.8 * 4 * 0.2 + 1


def test_an_unexpected_error_in_a_sending_thread_stops_the_run_and_loses_no_one(server, sender, monkeypatch):
    smtp = server()
    settings = sender(smtp.port, count=12, smtp="connections = 4\n")
    original = Wire.data_for

    def broken(self, subscriber, message_id=""):
        if subscriber.email == "reader5@example.com":
            raise RuntimeError("something nobody expected")
        return original(self, subscriber, message_id)

    monkeypatch.setattr(Wire, "data_for", broken)
    done = threading.Event()
    outcome = []

    def go():
        try:
            send_day(settings, DAY)
        except DeliveryError as exc:
            outcome.append(str(exc))
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(20), "the run must end, never hang"
    assert (
        len(outcome) == 1 and "unexpected error while sending (RuntimeError: something nobody expected)" in outcome[0]
    )
    assert statuses(settings)["reader5@example.com"] == "pending"
    monkeypatch.setattr(Wire, "data_for", original)
    send_day(settings, DAY)
    assert sorted(smtp.handler.recipients()) == sorted(READERS[:12])  # each exactly once


def test_an_idn_domain_goes_as_a_labels_in_the_envelope_and_the_header(server, sender):
    smtp = server()
    settings = sender(smtp.port, count=0)
    settings.paths.subscribers.write_text("email,name,timezone\nx@bücher.de,Zoë,\n", encoding="utf-8")
    result = send_day(settings, DAY)
    assert result.delivered == 1
    message = smtp.handler.messages[0]
    assert message.rcpt_tos == ["x@xn--bcher-kva.de"]
    assert message.message["To"] == "Zoë <x@xn--bcher-kva.de>"


@pytest.mark.parametrize("offered", [True, False], ids=["smtputf8", "no-smtputf8"])
def test_a_non_ascii_local_part_goes_with_smtputf8_or_is_a_clear_permanent_failure(server, sender, offered):
    smtp = server(enable_SMTPUTF8=offered)
    settings = sender(smtp.port, count=2)
    with settings.paths.subscribers.open("a", encoding="utf-8") as csv:
        csv.write("jürgen@bücher.de,Jürgen,\n")
    result = send_day(settings, DAY)
    row = ledger_rows(settings)["jürgen@bücher.de"]
    if offered:
        assert result.delivered == 3 and row["status"] == "delivered"
        message = next(m for m in smtp.handler.messages if m.rcpt_tos == ["jürgen@xn--bcher-kva.de"])
        assert message.message["To"] == "Jürgen <jürgen@xn--bcher-kva.de>"
    else:
        assert (result.delivered, result.unsendable, result.complete) == (2, 1, True)
        assert row["status"] == "skipped" and "needs SMTPUTF8" in row["last_reply"]
        assert "1 not sendable" in result.summary()
        assert state.suppressed(storage.connect(settings)) == {}, "not a bounce: nothing suppressed"
    assert len(smtp.handler.recipients()) == len(set(smtp.handler.recipients()))


def test_subscribers_check_warns_beforehand_about_addresses_that_need_smtputf8(sender, tmp_path, monkeypatch):
    settings = sender(free_port(), count=1)
    with settings.paths.subscribers.open("a", encoding="utf-8") as csv:
        csv.write("jürgen@bücher.de,Jürgen,\nx@bücher.de,,\n")
    code, out, _ = invoke(tmp_path, monkeypatch, "subscribers", "check")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"{settings.paths.subscribers}:3: warning: jürgen@bücher.de has a non-ASCII local part: it can be sent "
        "only if the SMTP server offers SMTPUTF8, else it is recorded as not sendable"
    )
    assert lines[1].endswith(": 3 rows, 0 bad")


class LimitedController(BusyController):
    """A server that admits at most ``limit`` sessions at once and answers 421 at the greeting to the others."""

    def __init__(self, handler, limit, **kwargs):
        super().__init__(handler, **kwargs)
        self.limit, self.active = limit, 0

    def factory(self):
        if self.active >= self.limit:
            return Busy(self.handler, **self.SMTP_kwargs)
        controller = self

        class Counted(SMTP):
            def connection_made(self, transport):
                controller.active += 1
                super().connection_made(transport)

            def connection_lost(self, exc):
                controller.active -= 1
                super().connection_lost(exc)

        return Counted(self.handler, **self.SMTP_kwargs)


def test_a_server_that_admits_fewer_connections_than_configured_slows_the_run_but_does_not_stop_it(sender):
    handler = FaultyHandler()
    handler.delay = 0.05
    controller = LimitedController(handler, limit=2)
    controller.start()
    try:
        settings = sender(controller.port, count=40, smtp="connections = 4\n", timeout=1)
        result = send_day(settings, DAY)
    finally:
        controller.stop()
    assert (result.delivered, result.failed) == (40, 0)
    assert sorted(handler.recipients()) == sorted(READERS[:40])
    assert all(row["attempts"] == 1 for row in ledger_rows(settings).values())


# The work queue between the ledger and the connections.


def dues(first: int, count: int) -> list[Due]:
    return [Due(i, Subscriber(f"reader{i}@example.com"), 0) for i in range(first, first + count)]


def test_the_next_claim_runs_ahead_without_holding_up_the_other_connections():
    claimed, release, released = [], threading.Event(), []

    def claims():
        claimed.append(len(claimed))
        if len(claimed) == 2:  # a claim that waits for the database's lock, until the rows at hand are taken
            released.append(release.wait(10))
        return dues(4 * (len(claimed) - 1), 4) if len(claimed) <= 2 else None

    queue = WorkQueue(claims, threading.Event(), low=3)
    taken = [queue.take()]
    assert taken[0].due.rowid == 0  # the first claim: rows 0-3
    ahead = threading.Thread(target=queue.top_up)
    ahead.start()  # three rows left: the next batch is claimed now, before they run out
    while len(claimed) < 2:
        time.sleep(0.01)
    taken += [queue.take_now() for _ in range(3)]
    assert [work.due.rowid for work in taken] == [0, 1, 2, 3], "the claim in progress blocks nobody"
    release.set()
    ahead.join()
    taken += [queue.take() for _ in range(4)]
    assert [work.due.rowid for work in taken[4:]] == [4, 5, 6, 7]
    for work in taken:
        queue.done(work)
    assert queue.take() is None and len(claimed) == 3
    assert released == [True], "the rows at hand were taken while the claim was still waiting"


def test_a_queue_whose_rest_another_sender_holds_looks_again_soon_then_less_often():
    now, claimed = [0.0], []

    def claims():  # eight times the rest is held by another sender, then two rows are free, then none again
        claimed.append(now[0])
        return dues(0, 2) if len(claimed) == 9 else []

    queue = WorkQueue(claims, threading.Event(), clock=lambda: now[0], poll=1.0, low=10)
    for step in range(5000):  # every millisecond for five seconds: when does it ask the ledger?
        now[0] = step / 1000
        queue.top_up()
    gaps = [b - a for a, b in itertools.pairwise(claimed)]
    expected = [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert gaps[:8] == pytest.approx(expected, abs=0.0015), "soon at first, then up to the poll"
    assert gaps[8:10] == pytest.approx([0.001, 0.02], abs=0.0015), "rows found: claim at once, and soon after an empty one"
