"""The command line: a thin shell that reads options, calls library functions and prints.

Every NewsletterError becomes one line 'Error: ...' on stderr and exit status 1.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import click

from newsletter import config, events, selection, state, storage, subscribers
from newsletter.errors import NewsletterError

log = logging.getLogger("newsletter")


class DateParam(click.ParamType):
    """A YYYY-MM-DD date, with a one-line error otherwise."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        text = str(value).strip()
        match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text)
        if match is None:
            self.fail(f"{value!r} is not a date in the form YYYY-MM-DD", param, ctx)
        year, month, day = map(int, match.groups())
        try:
            return date(year, month, day)
        except ValueError:
            self.fail(f"{text!r} is impossible: {_why_impossible(year, month)}", param, ctx)


def _why_impossible(year: int, month: int) -> str:
    """Why a YYYY-MM-DD that reads like a date is none: 'February 2026 has 28 days'."""
    if year == 0:
        return "there is no year 0"
    if not 1 <= month <= 12:
        return f"there is no month {month}"
    return f"{calendar.month_name[month]} {year} has {calendar.monthrange(year, month)[1]} days"


DATE = DateParam()


class Context:
    """What every command needs: the settings, read once."""

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file
        self._settings: config.Settings | None = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.load_settings(self.config_file)
            logging.getLogger("newsletter").setLevel(self._settings.newsletter.log_level.upper())
        return self._settings

    def today(self) -> date:
        """Today in the configured time zone; the CLI is one of two places that read the clock."""
        return selection.today_in(self.settings.zone, datetime.now().astimezone())


pass_ctx = click.make_pass_decorator(Context)


class NewsletterGroup(click.Group):
    """Turn our own errors into click's one-line 'Error: ...' and exit status 1, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            raise _click_error(exc) from None
        except storage.backend_errors() as exc:  # the state database failed in a command: one line naming it
            raise _click_error(storage.error_for(exc, _settings(ctx))) from None


def _click_error(exc: NewsletterError) -> click.ClickException:
    error = click.ClickException(str(exc))
    # click declares exit_code a ClassVar, yet an instance's own value is what it exits with: its annotation is too strict
    cast(Any, error).exit_code = exc.exit_code
    return error


def _settings(ctx: click.Context) -> config.Settings | None:
    found = ctx.find_object(Context)
    if found is None:
        return None
    try:
        return found.settings
    except (AttributeError, NewsletterError):
        return None


@click.group(cls=NewsletterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="TOML configuration file (default: $NEWSLETTER_CONFIG, then ./newsletter.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details, with addresses in clear (else masked).")
@click.version_option(package_name="onthisday-newsletter", prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """What happened today in history? Build, publish and send the daily edition."""
    from newsletter import logs

    logs.setup(verbose)
    ctx.obj = Context(config_file)


@cli.command("config")
@pass_ctx
def config_command(ctx: Context) -> None:
    """Print the effective configuration (secrets masked)."""
    click.echo(config.as_toml(ctx.settings), nl=False)


@cli.group("events")
def events_group() -> None:
    """Inspect the event library."""


@events_group.command("check")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@pass_ctx
def events_check(ctx: Context, strict: bool, folder: Path | None) -> None:
    """Validate every event file; one line per problem, the balance tables, then the calendar coverage."""
    library = events.load_library(folder or ctx.settings.paths.events)
    problems = library.problems + events.check_library(library)
    for problem in problems:
        click.echo(str(problem))
    for line in balance_lines(events.balance(library)):
        click.echo(line)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    click.echo(f"{len(library.events)} events, {errors} errors, {warnings} warnings")
    click.echo(f"coverage: {library.coverage()}/366 days, {len(library.thin_days())} with fewer than two articles")
    if errors or (strict and warnings):
        sys.exit(1)


def balance_lines(balance: events.Balance) -> list[str]:
    """Format the subject, era and region tables: name, count, share."""

    def table(title: str, counts: dict[str, int]) -> list[str]:
        rows = [f"  {name:<14}{count:>5}{_share(count, balance.total):>8}" for name, count in counts.items()]
        return [f"{title}:", *rows]

    wars = f"wars and battles: {balance.subjects['war']} of {balance.total} ({_share(balance.subjects['war'], balance.total)})"
    return [
        *table("subjects", balance.subjects),
        wars,
        *table("eras", balance.eras),
        *table("regions", balance.regions),
    ]


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def load_edition(ctx: Context, day: date) -> selection.Edition:
    """Select the edition of a date, honouring editions already on record (read-only)."""
    from newsletter import editions

    conn = storage.connect_readonly(ctx.settings)
    try:
        return editions.edition_for(day, ctx.settings, conn, record=False)
    finally:
        if conn:
            conn.close()


class BarProgress:
    """A tqdm progress bar on a terminal; nothing otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, total: int) -> None:
        if self.bar is not None:  # planning has found more recipients
            self.bar.total = total
            self.bar.refresh()
        elif sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="msg", file=sys.stderr)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command("send")
@click.option("--date", "day", type=DATE, help="Edition date (default: today in newsletter.timezone).")
@click.option("--dry-run", is_flag=True, help="Do everything but connect to a server or change state.")
@click.option(
    "--to", "to_address", metavar="ADDRESS", help="Send one test copy to ADDRESS, recorded apart from the edition."
)
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each recipient's message as an .eml file in DIR instead of sending.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Retry only the recipients whose delivery failed with a temporary error."
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="Sender processes on this machine, sharing the edition (use every core).",
)
@pass_ctx
def send_command(
    ctx: Context,
    day: date | None,
    dry_run: bool,
    to_address: str | None,
    outbox: Path | None,
    retry_failed: bool,
    processes: int,
) -> None:
    """Send the edition of a date to every subscriber, exactly once."""
    from newsletter import editions  # imported here: premailer and the SMTP code load only when a command needs them

    if processes > 1 and (dry_run or outbox or to_address):
        raise click.BadParameter("only a real send of the edition uses several processes", param_hint="--processes")
    settings = ctx.settings
    day = day or ctx.today()
    if dry_run or outbox:
        report = editions.dry_run(settings, day, outbox=outbox)
        event = report.edition.event
        click.echo(f"date: {day.isoformat()}")
        click.echo(f"event: {event.title} ({event.year_label}) [{event.id}]")
        click.echo(f"subject: {report.rendered.subject}")
        click.echo(report.rendered.describe_size())
        for problem in report.tally.problems:
            click.echo(f"skipped: {problem}")
        verb = "written to " + str(outbox) if outbox else "would be sent"
        click.echo(f"recipients: {report.recipients} ({verb}; {report.already} already done)")
        click.echo(f"weekly digests: {report.digests} ({verb})")
        click.echo(report.tally.skipped_summary())
        _warn_postal_address(settings)
        return
    _publish_page(settings, day)  # before anyone is mailed: "View in your browser" must never 404
    if to_address:
        reply = editions.send_test_copy(settings, day, to_address)
        click.echo(f"test copy of {day.isoformat()} sent to {to_address}: {reply}")
        _warn_postal_address(settings)
        return
    if processes > 1:
        from newsletter.senders import send_with_processes

        result = send_with_processes(settings, day, processes, retry_failed=retry_failed, progress=BarProgress())
    else:
        result = editions.send_day(settings, day, retry_failed=retry_failed, progress=BarProgress())
    click.echo(result.summary())
    _warn_postal_address(settings)
    if not result.complete:
        click.echo(
            f"Error: {result.failed} recipients failed temporarily; run 'newsletter send --retry-failed --date {day.isoformat()}' later",
            err=True,
        )
        sys.exit(3)


def _warn_postal_address(settings: config.Settings) -> None:
    if not settings.newsletter.postal_address:
        click.echo(
            "warning: newsletter.postal_address is empty, so the email footer has no postal address "
            "(the US CAN-SPAM Act requires one in commercial email); set it in the configuration",
            err=True,
        )


def _publish_page(settings: config.Settings, day: date) -> None:
    from newsletter import feeds

    conn = storage.connect(settings)
    try:
        feeds.publish_edition_page(settings, day, conn)
    finally:
        conn.close()


@cli.command("status")
@click.option("--date", "day", type=DATE, help="Show one edition in detail: outcomes and the last replies of failures.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@pass_ctx
def status_command(ctx: Context, day: date | None, as_json: bool) -> None:
    """Show subscribers, suppressions, the last editions, test copies and what is due next in each zone."""
    from newsletter import status

    with synced_list(ctx) as conn:
        status.settle_journals(conn)
        if day:
            data = status.edition_detail(conn, day)
        else:
            data = status.overview(ctx.settings, conn, datetime.now().astimezone())
    if as_json:
        click.echo(json.dumps(data, indent=1, ensure_ascii=False))
    else:
        click.echo(edition_text(data) if day else overview_text(data), nl=False)


def overview_text(data: dict[str, Any]) -> str:
    """The status overview as tables, one section after another."""
    parts = [subscriber_table(data["subscribers"])]
    parts.append("suppressions: " + ", ".join(f"{n} {reason}" for reason, n in data["suppressions"].items()) + "\n")
    columns = ("date", "event", "delivered", "bounced", "failed", "pending", "skipped")
    if data["editions"]:
        parts.append(table_text(columns, [[str(e[c]) for c in columns] for e in data["editions"]]))
    else:
        parts.append("editions: none sent yet\n")
    parts.append(_test_copies_text(data["test_copies"]))
    if data["journaled"]:
        parts.append(_journaled_text(data["journaled"]))
    due = [
        [z["zone"], str(z["readers"]), z["date"], "now" if z["due_now"] else _local(z["at"])] for z in data["next_due"]
    ]
    parts.append(
        "next due:\n" + table_text(("zone", "readers", "edition", "at"), due) if due else "next due: no readers\n"
    )
    return "\n".join(parts)


def edition_text(data: dict[str, Any]) -> str:
    """One edition in detail: counts, then every recipient that did not get it with the last reply."""
    counts = ", ".join(f"{status} {n}" for status, n in data["counts"].items())
    lines = [f"date: {data['date']}", f"event: {data['event'] or '-'}", counts]
    if any(data["digest_counts"].values()):
        lines.append("weekly digests: " + ", ".join(f"{status} {n}" for status, n in data["digest_counts"].items()))
    if data.get("pruned"):
        lines.append("pruned: its recipient rows are folded into these totals (database.keep_days)")
    if data["journaled"]:
        lines.append(_journaled_text({data["date"]: data["journaled"]}).rstrip("\n"))
    failures = [[f["status"], f["email"], str(f["attempts"]), f["last_reply"] or "-"] for f in data["not_delivered"]]
    text = "\n".join(lines) + "\n"
    if failures:
        text += "\n" + table_text(("outcome", "email", "attempts", "last reply"), failures)
    return text + "\n" + _test_copies_text(data["tests"])


def _journaled_text(journaled: dict[str, int]) -> str:
    """Acceptances a stopped sender journaled and the ledger could not take yet: delivered, not in the counts."""
    dates = ", ".join(f"{n} of {day}" for day, n in journaled.items())
    return (
        f"journaled: {dates} delivered but not yet in these counts (in the journal of a sender that stopped);"
        " the next send records them first\n"
    )


def _test_copies_text(copies: list[dict[str, Any]]) -> str:
    if not copies:
        return "test copies: none\n"
    rows = [[c["date"], c["email"], c["status"], c["sent_at"], c["last_reply"]] for c in copies]
    return "test copies:\n" + table_text(("date", "to", "outcome", "sent", "reply"), rows)


def _local(moment: str) -> str:
    """'2026-06-26T07:00:00+01:00' for people: '2026-06-26 07:00 +0100' (the zone's own clock)."""
    return f"{datetime.fromisoformat(moment):%Y-%m-%d %H:%M %z}"


def subscriber_table(counts: dict[str, dict[str, int]]) -> str:
    """The list's counts by status (rows) and frequency (columns)."""
    header = ("subscribers", *state.FREQUENCIES, "total")
    rows = [[status, *(str(row[c]) for c in (*state.FREQUENCIES, "total"))] for status, row in counts.items()]
    return table_text(header, rows)


@cli.group("subscribers")
def subscribers_group() -> None:
    """Add, remove, import, list and check subscribers (the list of record in the state database)."""


@cli.command("preview")
@click.option("--date", "day", type=DATE, help="Edition date (default: today in newsletter.timezone).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "text", "eml"]),
    default="html",
    show_default=True,
    help="html or text part, or the whole message for a sample subscriber.",
)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of standard output."
)
@click.option("--digest", is_flag=True, help="The weekly digest of the date (its past seven editions) instead.")
@pass_ctx
def preview_command(ctx: Context, day: date | None, fmt: str, output: Path | None, digest: bool) -> None:
    """Render the edition (or weekly digest) of a date as HTML, plain text or a whole .eml message."""
    from newsletter import digests, render

    day = day or ctx.today()
    if digest:
        rendered = digests.renderer(ctx.settings, day, lambda d: load_edition(ctx, d), allow_insecure_secret=True)(
            digests.first_day(day, None)
        )
    else:
        rendered = render.render_edition(load_edition(ctx, day), ctx.settings, allow_insecure_secret=True)
    data = {
        "html": rendered.html.encode("utf-8"),
        "text": rendered.text.encode("utf-8"),
        "eml": rendered.message_for(render.SAMPLE),
    }[fmt]
    if output is None:
        click.echo(data.decode("utf-8"), nl=False)
        return
    output.write_bytes(data)
    click.echo(f"wrote {output} ({len(data)} bytes)", err=True)


@cli.command("publish")
@click.option("--date", "day", type=DATE, help="Last edition to include (default: today in newsletter.timezone).")
@pass_ctx
def publish_command(ctx: Context, day: date | None) -> None:
    """Write the RSS and Atom feeds and the web archive into the public folder."""
    from newsletter import feeds

    settings = ctx.settings
    now = datetime.now().astimezone()
    conn = storage.connect(settings)
    try:
        result = feeds.publish(settings, day or ctx.today(), conn, now=now)
    finally:
        conn.close()
    for missing in result.missing:
        click.echo(f"warning: no event for {missing.isoformat()}; that day is left out", err=True)
    click.echo(f"{result.summary()} in {settings.paths.public}")


@cli.command("run")
@click.option("--once", is_flag=True, help="Do whatever is due now and exit (for cron and systemd timers).")
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0.05),
    default=30.0,
    show_default=True,
    help="Seconds between checks of what is due.",
)
@click.option("--now", "start", hidden=True, help="Testing only: an aware ISO time the clock starts from.")
@pass_ctx
def run_command(ctx: Context, once: bool, heartbeat: float, start: str | None) -> None:
    """Publish and send every day at send_time, in each reader's own time zone."""
    import signal
    import time

    from newsletter import scheduler

    settings = ctx.settings
    clock = _clock(start, time.monotonic)
    daily = scheduler.Daily(settings)
    if once:
        beat = daily.beat(clock())
        for sent in beat.sends:
            click.echo(sent.summary())
        if not beat.ok:
            sys.exit(beat.exit_code)
        return

    def stop(signum: int, frame: Any) -> None:
        log.info("received %s: finishing the message in flight", signal.Signals(signum).name)
        daily.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.run_daemon(daily, clock=clock, heartbeat=heartbeat)


def _clock(start: str | None, monotonic: Any) -> Any:
    """The real clock, or (for tests) one that starts at a given aware instant and then runs."""
    if start is None:
        return lambda: datetime.now().astimezone()
    try:
        origin = datetime.fromisoformat(start)
    except ValueError:
        raise click.BadParameter(f"{start!r} is not an ISO date-time", param_hint="--now") from None
    if origin.tzinfo is None:
        raise click.BadParameter("must include a UTC offset", param_hint="--now")
    began = monotonic()
    return lambda: origin + timedelta(seconds=monotonic() - began)


def _keep_days(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and (value < 0 or 0 < value < 14):
        raise click.BadParameter("must be 0 (keep everything) or at least 14 (bounces and digests need two weeks)")
    return value


@cli.command("prune")
@click.option(
    "--keep-days",
    type=int,
    callback=_keep_days,
    metavar="N",
    help="Keep the recipient rows of the last N days whole (default: database.keep_days).",
)
@pass_ctx
def prune_command(ctx: Context, keep_days: int | None) -> None:
    """Fold the recipient rows of editions older than N days into per-edition totals (status shows the same)."""
    from newsletter import retention

    keep = ctx.settings.database.keep_days if keep_days is None else keep_days
    with state_db(ctx) as conn, conn.guarded():
        result = retention.prune(conn, ctx.today(), keep)
    for folded in result.folded:
        click.echo(folded.line())
    click.echo(result.summary())


@cli.command("serve")
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default: web.port, 8080).")
@pass_ctx
def serve_command(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve unsubscribe, sign-up and the public folder (feeds, archive) over HTTP."""
    from newsletter import web

    settings = ctx.settings
    settings.signing_secret()  # fail now, in one line, rather than on the first request
    web.serve(settings, host or settings.web.host, port or settings.web.port)


@cli.command("doctor")
@pass_ctx
def doctor_command(ctx: Context) -> None:
    """Check the deployment without sending anything; one line per check, exit 1 if any fails.

    Secret, base_url, postal address, event library, templates, DKIM key (and the TXT record
    to publish), and the SMTP relay: EHLO, STARTTLS and AUTH as configured, then a MAIL FROM
    that is reset at once.
    """
    from newsletter import doctor

    checks = doctor.run_checks(ctx.settings, ctx.today())
    for check in checks:
        click.echo(str(check))
    failures = sum(check.status == doctor.FAIL for check in checks)
    click.echo(f"{len(checks)} checks: {failures} failed")
    if failures:
        sys.exit(1)


@cli.command("migrate")
@click.option("--to", "url", required=True, metavar="URL", help="The empty PostgreSQL database: postgresql://user@host:5432/dbname.")
@pass_ctx
def migrate_command(ctx: Context, url: str) -> None:
    """Copy the SQLite state (every table) into an empty PostgreSQL database, in one transaction.

    The SQLite file in paths.state is left untouched; a database that already holds tables is
    refused. The password comes from NEWSLETTER_DATABASE_URL (the same URL with it), PGPASSWORD
    or ~/.pgpass, never from the command line. Then set database.url to the URL.
    """
    import os

    from newsletter.storage import transfer

    target = transfer.target_url(url, os.environ.get("NEWSLETTER_DATABASE_URL", ""))
    copied = transfer.copy_to_postgres(ctx.settings.paths.state, target)
    for line in copied.lines():
        click.echo(line)
    click.echo(copied.summary())


@cli.group("inbox")
def inbox_group() -> None:
    """Read the bounce mailbox: delivery reports, complaints, unsubscribe requests."""


def _inbox_import(ctx: Context, paths: tuple[Path, ...]) -> None:
    from newsletter.mail import inbox

    conn = storage.connect(ctx.settings)
    try:
        reports = inbox.import_paths(list(paths), ctx.settings, conn)
    finally:
        conn.close()
    for report in reports:
        for line in report.lines():
            click.echo(line)
    click.echo(inbox.summary(reports))
    if inbox.failed(reports):
        sys.exit(1)


@inbox_group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_ctx
def inbox_import(ctx: Context, paths: tuple[Path, ...]) -> None:
    """Handle each message of .eml files and Maildir folders once.

    Delivery status notifications (RFC 3464) suppress permanent failures, complaint reports
    (ARF, RFC 5965) suppress the reader as complained, and a mail to the List-Unsubscribe
    mailto address unsubscribes its sender if they are a subscriber. A Maildir message is
    then moved to cur/ with the Seen flag; a second import changes nothing and says so.
    """
    _inbox_import(ctx, paths)


@cli.group("bounces")
def bounces_group() -> None:
    """Handle bounced mail (kept as an alias of 'newsletter inbox')."""


@bounces_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_ctx
def bounces_import(ctx: Context, files: tuple[Path, ...]) -> None:
    """The same as 'newsletter inbox import': .eml files and Maildir folders."""
    _inbox_import(ctx, files)


@contextmanager
def synced_list(ctx: Context) -> Iterator[storage.Database]:
    """The state database with paths.subscribers synced into the list; the file's bad rows are warned about."""
    settings = ctx.settings
    conn = storage.connect(settings)
    try:
        tally = subscribers.Tally()
        subscribers.sync_csv(settings.paths.subscribers, conn, tally)
        for problem in tally.problems:
            click.echo(f"warning: {problem}", err=True)
        yield conn
    finally:
        conn.close()


@contextmanager
def state_db(ctx: Context) -> Iterator[storage.Database]:
    """The state database (created if needed), closed afterwards."""
    conn = storage.connect(ctx.settings)
    try:
        yield conn
    finally:
        conn.close()


FREQUENCY = click.Choice(state.FREQUENCIES)
WEEKDAY = click.Choice(state.WEEKDAYS, case_sensitive=False)


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", default="", help="The reader's name, for the greeting.")
@click.option("--timezone", default="", metavar="ZONE", help="IANA time zone (default: newsletter.timezone).")
@click.option("--frequency", type=FREQUENCY, default="daily", show_default=True, help="Daily edition or weekly digest.")
@click.option("--weekday", type=WEEKDAY, default="monday", show_default=True, help="The weekly digest's day.")
@pass_ctx
def subscribers_add(ctx: Context, email: str, name: str, timezone: str, frequency: str, weekday: str) -> None:
    """Add EMAIL to the list (an earlier unsubscribe or bounce stays in force)."""
    with state_db(ctx) as conn:
        entry = subscribers.add(conn, email, name=name, timezone=timezone, frequency=frequency, weekday=weekday.lower())
    held = "" if entry.status == "active" else f"; it stays {entry.status} (see 'newsletter subscribers resubscribe')"
    click.echo(f"added {entry.email} ({entry.frequency}){held}")


@subscribers_group.command("set")
@click.argument("email")
@click.option("--name", help="The reader's name, for the greeting.")
@click.option("--timezone", metavar="ZONE", help="IANA time zone ('' for newsletter.timezone).")
@click.option("--frequency", type=FREQUENCY, help="Daily edition or weekly digest.")
@click.option("--weekday", type=WEEKDAY, help="The weekly digest's day.")
@pass_ctx
def subscribers_set(
    ctx: Context, email: str, name: str | None, timezone: str | None, frequency: str | None, weekday: str | None
) -> None:
    """Change the preferences of EMAIL, as the reader can on their preferences page."""
    given = {"name": name, "timezone": timezone, "frequency": frequency, "weekday": weekday and weekday.lower()}
    with synced_list(ctx) as conn:
        entry = subscribers.change(conn, email, **{k: v for k, v in given.items() if v is not None})
    when = f"weekly on {entry.weekday}" if entry.frequency == "weekly" else "daily"
    click.echo(f"{entry.email}: {when}, zone {entry.timezone or 'of the newsletter'}, name {entry.name or '-'}")


@subscribers_group.command("remove")
@click.argument("email")
@pass_ctx
def subscribers_remove(ctx: Context, email: str) -> None:
    """Unsubscribe EMAIL: it is suppressed as unsubscribed and kept on record."""
    with state_db(ctx) as conn:
        done = subscribers.remove(conn, email)
    click.echo(f"unsubscribed {email.strip().lower()}" if done else f"{email.strip().lower()} was already suppressed")


@subscribers_group.command("resubscribe")
@click.argument("email")
@click.option("--force", is_flag=True, help="Also lift a bounce or a complaint.")
@pass_ctx
def subscribers_resubscribe(ctx: Context, email: str, force: bool) -> None:
    """Lift the unsubscribe of EMAIL (a bounce or complaint only with --force)."""
    with state_db(ctx) as conn:
        lifted = subscribers.resubscribe(conn, email, force=force)
    address = email.strip().lower()
    click.echo(f"resubscribed {address} (was {lifted})" if lifted else f"{address} is already active")


@subscribers_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def subscribers_import(ctx: Context, file: Path) -> None:
    """Add the rows of a CSV file (email,name,timezone[,frequency,weekday]); bad rows are reported and skipped."""
    tally = subscribers.Tally()
    with state_db(ctx) as conn:
        result = subscribers.import_csv(file, conn, tally)
    for problem in tally.problems:
        click.echo(str(problem), err=True)
    click.echo(
        f"{file}: {result.added} added, {result.unchanged} already on the list, "
        f"{tally.invalid} bad rows skipped, {tally.duplicates} duplicates"
    )
    if tally.problems:
        sys.exit(1)


LIST_COLUMNS = ("email", "name", "timezone", "frequency", "weekday", "status", "source", "created_at")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice(state.SUBSCRIBER_STATUSES), help="Only subscribers of this status.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True, help="Output."
)
@pass_ctx
def subscribers_list(ctx: Context, status: str | None, fmt: str) -> None:
    """List the subscribers on record (paths.subscribers synced in first)."""
    with synced_list(ctx) as conn:
        rows = [[getattr(e, c) for c in LIST_COLUMNS] for e in subscribers.entries(conn, status)]
    if fmt == "json":
        click.echo(
            json.dumps([dict(zip(LIST_COLUMNS, row, strict=True)) for row in rows], ensure_ascii=False, indent=1)
        )
    elif fmt == "csv":
        click.echo(csv_text([LIST_COLUMNS, *rows]), nl=False)
    else:
        click.echo(table_text(LIST_COLUMNS, rows), nl=False)


def csv_text(rows: Iterable[Iterable[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def table_text(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, the last one unpadded."""
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(header)]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(header), *rows]
    ]
    return "\n".join(lines) + "\n"


@subscribers_group.command("check")
@pass_ctx
def subscribers_check(ctx: Context) -> None:
    """Report the CSV file's bad rows and count who would be mailed, without changing anything; exit 1 if a row is bad."""
    settings = ctx.settings
    conn = storage.connect_readonly(settings)
    tally = subscribers.Tally()
    try:
        found = [s.frequency for s in subscribers.iter_recipients(settings.paths.subscribers, conn, tally, None)]
    finally:
        if conn:
            conn.close()
    for problem in tally.problems:
        click.echo(str(problem))
    for note in tally.notes:
        click.echo(str(note))
    click.echo(f"{settings.paths.subscribers}: {tally.rows} rows, {tally.invalid} bad")
    daily, weekly = found.count("daily"), found.count("weekly")
    click.echo(f"list: {len(found)} to mail ({daily} daily, {weekly} weekly); {tally.skipped_summary()}")
    if tally.problems:
        sys.exit(1)


@subscribers_group.command("export")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of standard output."
)
@pass_ctx
def subscribers_export(ctx: Context, output: Path | None) -> None:
    """Write everyone who is mailed as CSV (email,name,timezone,frequency,weekday), ready for 'import'."""
    settings = ctx.settings
    tally = subscribers.Tally()
    with synced_list(ctx) as conn:
        rows = [
            [s.email, s.name, s.timezone, s.frequency, s.weekday]
            for s in subscribers.iter_recipients(settings.paths.subscribers, conn, tally, None)
        ]
    text = csv_text([subscribers.COLUMNS, *rows])
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}: {len(rows)} subscribers; {tally.skipped_summary()}", err=True)
    else:
        click.echo(text, nl=False)


@cli.group("suppressions")
def suppressions_group() -> None:
    """See and lift suppressions (unsubscribed, bounced, complained addresses are never mailed)."""


@suppressions_group.command("list")
@pass_ctx
def suppressions_list(ctx: Context) -> None:
    """List every suppressed address with its reason, date and detail."""
    with state_db(ctx) as conn:
        rows = [[r["email"], r["reason"], r["created_at"], r["detail"]] for r in state.suppression_rows(conn)]
    click.echo(table_text(("email", "reason", "since", "detail"), rows), nl=False)


@suppressions_group.command("remove")
@click.argument("email")
@pass_ctx
def suppressions_remove(ctx: Context, email: str) -> None:
    """Lift the suppression of EMAIL, whatever its reason (the address is mailed again if it is on the list)."""
    with state_db(ctx) as conn:
        reason = subscribers.lift(conn, email)
    click.echo(f"lifted the suppression of {email.strip().lower()} (was {reason})")


# The example that ends each command's --help (a test holds every command to having one).
EXAMPLES: dict[str, str] = {
    "": "newsletter --config site.toml send --dry-run",
    "config": "newsletter --config site.toml config",
    "events": "newsletter events check --strict",
    "events check": "newsletter events check --strict data/events",
    "send": "newsletter send --dry-run --date 2026-06-25",
    "status": "newsletter status --date 2026-06-25",
    "subscribers": "newsletter subscribers list --status active",
    "subscribers add": "newsletter subscribers add ada@example.com --name Ada --timezone Europe/London",
    "subscribers set": "newsletter subscribers set ada@example.com --frequency weekly --weekday sunday",
    "subscribers remove": "newsletter subscribers remove ada@example.com",
    "subscribers resubscribe": "newsletter subscribers resubscribe ada@example.com",
    "subscribers import": "newsletter subscribers import new-readers.csv",
    "subscribers list": "newsletter subscribers list --status active --format csv",
    "subscribers check": "newsletter subscribers check",
    "subscribers export": "newsletter subscribers export --output subscribers.csv",
    "preview": "newsletter preview --date 2026-06-25 --output june25.html",
    "publish": "newsletter publish --date 2026-06-25",
    "run": "newsletter run --once",
    "prune": "newsletter prune --keep-days 30",
    "serve": "newsletter serve --host 127.0.0.1 --port 8080",
    "doctor": "newsletter --config /srv/newsletter/newsletter.toml doctor",
    "migrate": "newsletter migrate --to postgresql://newsletter@db.example.org:5432/newsletter",
    "inbox": "newsletter inbox import /var/mail/bounces/Maildir",
    "inbox import": "newsletter inbox import /var/mail/bounces/Maildir bounces/*.eml",
    "bounces": "newsletter bounces import bounces/*.eml",
    "bounces import": "newsletter bounces import bounces/*.eml",
    "suppressions": "newsletter suppressions list",
    "suppressions list": "newsletter suppressions list",
    "suppressions remove": "newsletter suppressions remove ada@example.com",
}


def _add_examples(command: click.Command, path: str = "") -> None:
    """End the help of every command with its example ('\b' keeps click from rewrapping it)."""
    if path in EXAMPLES:
        command.epilog = f"\b\nExample:\n  {EXAMPLES[path]}"
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            _add_examples(sub, f"{path} {name}".strip())


_add_examples(cli)


def main() -> None:
    """Run the CLI, turning our errors into one line and exit status 1."""
    try:
        cli.main(standalone_mode=False, prog_name="newsletter")
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except NewsletterError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
