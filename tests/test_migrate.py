"""`newsletter migrate --to postgresql://...`: every table of the SQLite state copied into an empty
PostgreSQL database in one transaction, the rows per table reported, the SQLite file untouched."""

import dataclasses
from datetime import date

import psycopg
import pytest
from click.testing import CliRunner

from newsletter import state, storage
from newsletter.cli import cli
from newsletter.editions import send_day
from newsletter.ledger import DatabaseLedger
from newsletter.sending.throttle import Throttle
from newsletter.storage import postgres, sqlite

DAY = date(2026, 6, 25)


@pytest.fixture
def pg_url(pg_server, request):
    return pg_server.fresh_database(f"m_{request.node.name[5:45].lower()}")


@pytest.fixture
def filled(make_settings, event_folder, tmp_path, smtp_server):
    """A SQLite state after a real send, with a row in every table."""
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name,timezone\n" + "".join(f"r{i}@example.com,R {i},\n" for i in range(5)), encoding="utf-8")
    settings = make_settings(
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n',
        events=event_folder, state=tmp_path / "var", public=tmp_path / "public", subscribers=csv,
    )  # fmt: skip
    smtp_server.handler.reject["r4@example.com"] = "550 5.1.1 no such user"
    assert send_day(settings, DAY).delivered == 4
    db = storage.connect(settings)
    with db.transaction():
        DatabaseLedger(db).record_test_send(DAY, "me@example.org", "delivered", "250 ok", "<t@example.org>")
        state.first_notice(db, "stale", DAY, "Asia/Tokyo")
        db.execute("INSERT INTO signup_attempts VALUES ('x@example.org', 1764600000.5)")
        db.execute(
            "INSERT INTO signup_requests VALUES ('abc', 'x@example.org', 'X', 'UTC', '2026-06-24T07:00:00+00:00')"
        )
        db.execute("INSERT INTO inbox_messages VALUES ('id:<m@x>', 'suppressed', '2026-06-25T08:00:00+00:00')")
        db.execute("INSERT INTO edition_totals VALUES ('2026-01-01', 'edition', 'delivered', 12)")  # a pruned edition
        Throttle(db, "relay:587/me", 10, 100, clock=lambda: 1764600000.25).reserve()  # send_budget, send_slots
    empty = [t for t in db.tables() if db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0]
    assert empty == [], "the test state must hold a row in every table"
    db.close()
    return settings


def migrate(tmp_path, *args, env=None):
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "newsletter.toml"), "migrate", *args], env={"NEWSLETTER_SECRET": "s", **(env or {})}
    )
    return result.exit_code, result.stdout, result.stderr


def rows_of(db, table):
    columns = "rowid, *" if table == "deliveries" and db.backend == "sqlite" else "*"  # PostgreSQL's id comes first
    return sorted(tuple(row) for row in db.execute(f"SELECT {columns} FROM {table}"))


def test_every_table_is_copied_with_its_rows_and_the_sqlite_file_is_untouched(filled, tmp_path, pg_url):
    path = sqlite.db_path(filled.paths.state)
    before = path.read_bytes()
    code, out, err = migrate(tmp_path, "--to", pg_url)
    assert (code, err) == (0, "")
    assert path.read_bytes() == before
    source, target = sqlite.connect_readonly(filled.paths.state), postgres.connect(pg_url)
    tables = [t for t in source.tables() if t != "migrations"]
    reported = dict(line.split() for line in out.splitlines()[:-1])
    assert reported == {t: str(source.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
    assert out.splitlines()[-1].startswith(f"copied {sum(map(int, reported.values()))} rows in {len(tables)} tables ")
    for table in tables:
        assert rows_of(target, table) == rows_of(source, table), table


def test_the_copy_works_on_postgresql_where_the_file_left_off(filled, tmp_path, pg_url, smtp_server):
    assert migrate(tmp_path, "--to", pg_url)[0] == 0
    on_pg = dataclasses.replace(filled, database=dataclasses.replace(filled.database, url=pg_url))
    assert send_day(on_pg, DAY).delivered == 0, "nobody is mailed twice after the move"
    with storage.connect(on_pg) as db:
        ledger = DatabaseLedger(db)
        assert ledger.counts(DAY) == {"pending": 0, "delivered": 4, "failed": 0, "bounced": 1, "skipped": 0}
        assert ledger.plan(date(2026, 6, 26), [state_subscriber("new@example.com")], lambda s: "<n@x>") == 1
        ids = [row[0] for row in db.execute("SELECT id FROM deliveries ORDER BY id")]
        assert len(set(ids)) == 6, "new rows get ids after the copied ones"


def state_subscriber(address):
    from newsletter.subscribers import Subscriber

    return Subscriber(address)


def test_a_target_that_is_not_empty_is_refused_with_one_line(filled, tmp_path, pg_url):
    assert migrate(tmp_path, "--to", pg_url)[0] == 0
    code, out, err = migrate(tmp_path, "--to", pg_url)
    assert code == 1 and out == ""
    assert err.startswith(f"Error: {pg_url}: not empty (it holds tables: ") and err.count("\n") == 1
    assert err.endswith("; migrate copies into an empty database only\n")


def test_a_failed_copy_leaves_the_target_empty(filled, tmp_path, pg_url):
    with sqlite.connect(filled.paths.state) as db:
        db.execute("CREATE TABLE someone_elses (x TEXT)")  # a table this version has no PostgreSQL form of
    code, _, err = migrate(tmp_path, "--to", pg_url)
    assert code == 1 and "has no table someone_elses" in err and err.count("\n") == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone() == (0,)


def test_no_password_on_the_command_line_but_the_environment_url_supplies_it(filled, tmp_path, pg_server, pg_url):
    code, _, err = migrate(tmp_path, "--to", pg_url.replace("postgres@", "postgres:hunter2@"))
    assert code == 1 and "hunter2" not in err
    assert err.startswith("Error: --to postgresql://postgres:********@") and "no password on the command line" in err
    env_url = pg_url.replace("postgres@", "postgres:any@")  # trust auth on loopback: any password is accepted
    code, out, _ = migrate(tmp_path, "--to", pg_url, env={"NEWSLETTER_DATABASE_URL": env_url})
    assert code == 0 and "to postgresql://postgres:********@" in out.splitlines()[-1]


def test_nothing_to_copy_is_one_line(make_settings, tmp_path, pg_url):
    make_settings(state=tmp_path / "var")
    code, _, err = migrate(tmp_path, "--to", pg_url)
    assert code == 1 and err == f"Error: {tmp_path / 'var' / sqlite.DB_NAME}: no SQLite state to copy (paths.state is {tmp_path / 'var'})\n"
