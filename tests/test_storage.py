"""The storage backends: the same schema under the same migration names, one-line errors, shared by threads.

The PostgreSQL cases run against a real server (tests/pgserver.py), each on a fresh database.
"""

import sqlite3
import threading

import psycopg
import pytest
from click.testing import CliRunner

from newsletter import state, storage
from newsletter.cli import cli
from newsletter.errors import StorageError
from newsletter.sending.throttle import Throttle
from newsletter.storage import postgres, sqlite


@pytest.fixture
def pg_url(pg_server, request):
    return pg_server.fresh_database(f"s_{request.node.name[:40].lower().replace('[', '_').replace(']', '')}")


def columns_sqlite(db, table):
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def columns_pg(db, table):
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", (table,)
    )
    return [row[0] for row in rows]


def test_both_backends_have_the_same_migrations_in_the_same_order():
    assert [name for name, _ in postgres.MIGRATIONS] == [name for name, _ in sqlite.MIGRATIONS]


def test_postgresql_holds_every_table_and_column_of_the_sqlite_file(tmp_path, pg_url):
    lite, pg = sqlite.connect(tmp_path), postgres.connect(pg_url)
    assert pg.tables() == lite.tables()
    for table in lite.tables():
        expected = columns_sqlite(lite, table)
        if table == "deliveries":
            expected = ["id", *expected]  # SQLite's rowid, made explicit
        assert columns_pg(pg, table) == expected, table
    names = [row[0] for row in pg.execute("SELECT name FROM migrations ORDER BY name")]
    assert names == sorted(name for name, _ in sqlite.MIGRATIONS)


def test_connect_picks_the_backend_from_database_url(make_settings, tmp_path, pg_url):
    with storage.connect(make_settings(state=tmp_path / "var")) as db:
        assert (db.backend, db.rowid, db.label) == ("sqlite", "rowid", str(tmp_path / "var" / sqlite.DB_NAME))
    with storage.connect(make_settings(env={"NEWSLETTER_DATABASE_URL": pg_url})) as db:
        assert (db.backend, db.rowid, db.label) == ("postgresql", "id", pg_url)


def test_rows_read_by_position_and_by_name_on_postgresql(pg_url):
    db = postgres.connect(pg_url)
    state.suppress(db, "Ada@Example.com", "bounced", "550 no such user")
    row = state.suppression_of(db, "ada@example.com")
    assert (row[0], row["reason"], row["detail"]) == ("ada@example.com", "bounced", "550 no such user")
    assert row.keys() == ["email", "reason", "detail", "created_at"]
    assert dict(row)["email"] == "ada@example.com"


def test_a_failed_transaction_leaves_nothing_behind_on_postgresql(pg_url):
    db = postgres.connect(pg_url)
    with pytest.raises(RuntimeError), db.transaction():
        state.record_edition(db, __import__("datetime").date(2026, 1, 1), "01-01-x")
        raise RuntimeError("crash in the middle")
    assert state.recorded_editions(db) == {}


def test_one_database_is_shared_by_threads_one_transaction_at_a_time(pg_url):
    db = postgres.connect(pg_url)

    def writer(n):
        for i in range(25):
            with db.transaction():
                state.suppress(db, f"r{n}-{i}@example.com", "bounced")
                db.execute("DELETE FROM suppressions WHERE email = ?", (f"r{n}-{i}@example.com",))
                state.suppress(db, f"r{n}-{i}@example.com", "unsubscribed")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(state.suppressed(db).values()) == {"unsubscribed"} and len(state.suppressed(db)) == 100


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(pg_url):
    errors = []

    def open_one():
        try:
            postgres.connect(pg_url).close()
        except Exception as exc:  # noqa: BLE001 - the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with postgres.connect(pg_url) as db:
        assert db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(postgres.MIGRATIONS)


def test_the_send_budget_is_shared_on_postgresql(pg_url):
    now = [1000.0]
    first, second = (Throttle(postgres.connect(pg_url), "relay", 10, 3, clock=lambda: now[0]) for _ in range(2))
    slots = [first.reserve(), second.reserve(), first.reserve(), second.reserve()]
    assert slots[:3] == [1000.0, 1000.1, 1000.2] and slots[3] >= 1000.0 + 3600


def test_a_per_second_budget_on_postgresql_is_one_statement_a_message(pg_url, monkeypatch):
    now = [1000.0]
    first, second = (Throttle(postgres.connect(pg_url), "relay", 10, 0, clock=lambda: now[0]) for _ in range(2))
    statements: list[str] = []
    for throttle in (first, second):
        real = throttle.db._execute
        monkeypatch.setattr(throttle.db, "_execute", lambda sql, params, real=real: statements.append(sql) or real(sql, params))
    assert [first.reserve(), second.reserve(), first.reserve()] == pytest.approx([1000.0, 1000.1, 1000.2])
    now[0] = 1005.0  # an idle spell: the budget does not save up slots
    assert [second.reserve(), first.reserve()] == pytest.approx([1005.0, 1005.1])
    assert len(statements) == 5, "one upsert a message, no BEGIN or COMMIT"


def test_read_only_access_to_an_empty_database_is_none_and_creates_nothing(pg_url):
    assert postgres.connect_readonly(pg_url) is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone() == (0,)
    postgres.connect(pg_url).close()
    db = postgres.connect_readonly(pg_url)
    with pytest.raises(StorageError, match="read-only"), db.guarded():
        db.execute("INSERT INTO editions VALUES ('2026-01-01', 'x', 'now')")


def test_a_foreign_postgresql_database_is_refused_and_not_migrated(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id integer PRIMARY KEY, title text)")
    with pytest.raises(StorageError) as caught:
        postgres.connect(pg_url)
    assert str(caught.value) == (
        f"{pg_url}: not a newsletter state database (it holds other tables: photos); "
        "point database.url at an empty database"
    )
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('migrations')").fetchone() == (None,)


def status_with(tmp_path, url):
    (tmp_path / "newsletter.toml").write_text(f'[paths]\nstate = "{tmp_path / "var"}"\n', encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["--config", str(tmp_path / "newsletter.toml"), "status"],
        env={"NEWSLETTER_SECRET": "s", "NEWSLETTER_DATABASE_URL": url},
    )
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "Traceback" not in result.output and not (tmp_path / "var" / sqlite.DB_NAME).exists()
    return result.stderr


def test_a_database_that_does_not_exist_is_one_line_naming_it(tmp_path, pg_server):
    url = pg_server.url("nosuch")
    assert status_with(tmp_path, url).startswith(
        f"Error: {url}: the database does not exist: create it (createdb) or fix database.url ("
    )


def test_a_refused_login_is_one_line_with_the_password_masked(tmp_path, pg_server):
    url = f"postgresql://nobody:s3cret-pw@{pg_server.host}:{pg_server.port}/postgres"
    err = status_with(tmp_path, url)
    masked = f"postgresql://nobody:********@{pg_server.host}:{pg_server.port}/postgres"
    assert err.startswith(f"Error: {masked}: the server refused the login: ")
    assert "s3cret-pw" not in err


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path):
    from tests.conftest import free_port

    url = f"postgresql://app:pw@127.0.0.1:{free_port()}/news"
    err = status_with(tmp_path, url)
    assert err.startswith(
        "Error: postgresql://app:********@127.0.0.1:"
    ) and ": cannot reach the database server: check that it runs and database.url's host and port (" in err


def test_sqlite_errors_keep_their_one_line(tmp_path):
    path = tmp_path / sqlite.DB_NAME
    path.write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(StorageError, match="not a usable newsletter state database"):
        sqlite.connect(tmp_path)
    assert isinstance(sqlite.storage_error(sqlite3.OperationalError("database or disk is full"), path), StorageError)
