"""The state database: migrations once, editions recorded once, suppressions, read-only access."""

import sqlite3
from datetime import date

from newsletter import state
from newsletter.storage import sqlite


def test_connect_creates_the_database_in_wal_mode_with_every_migration(tmp_path):
    conn = sqlite.connect(tmp_path / "var")
    assert (tmp_path / "var" / sqlite.DB_NAME).is_file()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY name")]
    assert applied == sorted(name for name, _ in sqlite.MIGRATIONS)


def test_migrations_run_once(tmp_path):
    sqlite.connect(tmp_path).close()
    conn = sqlite.connect(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(sqlite.MIGRATIONS)


def test_an_edition_is_recorded_once_and_never_rewritten(tmp_path):
    conn = sqlite.connect(tmp_path)
    assert state.record_edition(conn, date(2026, 6, 25), "06-25-a") == "06-25-a"
    assert state.record_edition(conn, date(2026, 6, 25), "06-25-b") == "06-25-a"
    assert state.recorded_editions(conn) == {date(2026, 6, 25): "06-25-a"}


def test_suppressions_are_case_insensitive_and_keep_the_first_reason(tmp_path):
    conn = sqlite.connect(tmp_path)
    state.suppress(conn, "Ada@Example.com", "unsubscribed")
    state.suppress(conn, "ada@example.com", "bounced")
    assert state.suppressed(conn) == {"ada@example.com": "unsubscribed"}


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    conn = sqlite.connect(tmp_path)
    try:
        with conn.transaction():
            state.record_edition(conn, date(2026, 1, 1), "01-01-x")
            raise RuntimeError("crash in the middle")
    except RuntimeError:
        pass
    assert state.recorded_editions(conn) == {}


def test_readonly_access_creates_nothing_and_cannot_write(tmp_path):
    assert sqlite.connect_readonly(tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
    sqlite.connect(tmp_path).close()
    conn = sqlite.connect_readonly(tmp_path)
    try:
        conn.execute("INSERT INTO editions VALUES ('2026-01-01', 'x', 'now')")
        raise AssertionError("a read-only connection accepted a write")
    except sqlite3.OperationalError:
        pass


def test_signups_awaiting_confirmation_survive_the_upgrade_to_per_link_requests(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", [m for m in sqlite.MIGRATIONS if m[0] != "0030-signup-requests"])
        old = sqlite.connect(tmp_path)
        old.execute(
            "INSERT INTO pending_signups VALUES ('ada@example.com', 'Ada', 'Europe/London', '2026-11-25T07:00:00+00:00')"
        )
        old.close()
    conn = sqlite.connect(tmp_path)
    row = conn.execute("SELECT token_hash, email, name, timezone FROM signup_requests").fetchone()
    assert tuple(row) == ("legacy:ada@example.com", "ada@example.com", "Ada", "Europe/London")
