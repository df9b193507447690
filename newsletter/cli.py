"""The command line: a thin shell that reads options, calls library functions and prints.

Every NewsletterError becomes one line 'Error: ...' on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from newsletter import __version__, config, events, selection, state
from newsletter.errors import NewsletterError

log = logging.getLogger("newsletter")


class DateParam(click.ParamType):
    """A YYYY-MM-DD date, with a one-line error otherwise."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a date in the form YYYY-MM-DD", param, ctx)


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
            raise click.ClickException(str(exc)) from None


@click.group(cls=NewsletterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="TOML configuration file (default: $NEWSLETTER_CONFIG, then ./newsletter.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """What happened today in history? Build, publish and send the daily edition."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose:
        logging.getLogger("newsletter").setLevel(logging.DEBUG)
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
    """Validate every event file; one line per problem, then the calendar coverage."""
    library = events.load_library(folder or ctx.settings.paths.events)
    for problem in library.problems:
        click.echo(str(problem))
    errors, warnings = len(library.errors), len(library.warnings)
    click.echo(f"{len(library.events)} events, {errors} errors, {warnings} warnings")
    click.echo(f"coverage: {library.coverage()}/366 days")
    if errors or (strict and warnings):
        sys.exit(1)


def load_edition(ctx: Context, day: date) -> selection.Edition:
    """Select the edition of a date, honouring editions already on record (read-only)."""
    settings = ctx.settings
    folder = settings.paths.events
    library = events.load_events(folder)
    conn = state.connect_readonly(settings.paths.state)
    history = state.recorded_editions(conn) if conn else {}
    return selection.select_edition(day, library, history, folder)


@cli.command("send")
@click.option("--date", "day", type=DATE, help="Edition date (default: today in newsletter.timezone).")
@click.option("--dry-run", is_flag=True, help="Do everything but connect to a server or change state.")
@pass_ctx
def send_command(ctx: Context, day: date | None, dry_run: bool) -> None:
    """Send the edition of a date to every subscriber."""
    from newsletter import render

    day = day or ctx.today()
    edition = load_edition(ctx, day)
    click.echo(f"date: {day.isoformat()}")
    click.echo(f"event: {edition.event.title} ({edition.event.year_label}) [{edition.event.id}]")
    rendered = render.render_edition(edition, ctx.settings, allow_insecure_secret=dry_run)
    click.echo(f"subject: {rendered.subject}")
    click.echo(rendered.describe_size())
    if not dry_run:
        raise NewsletterError("real sending is not available yet; use --dry-run")


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
@pass_ctx
def preview_command(ctx: Context, day: date | None, fmt: str, output: Path | None) -> None:
    """Render the edition of a date as HTML, plain text or a whole .eml message."""
    from newsletter import render

    edition = load_edition(ctx, day or ctx.today())
    rendered = render.render_edition(edition, ctx.settings, allow_insecure_secret=True)
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
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
