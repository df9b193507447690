"""The state database when storage fails: a full disk, a read-only folder, a corrupted or foreign file.

Every command answers with one line 'Error: <file>: <what is wrong and what to do> (...)',
never a traceback; nothing is half-written; nobody is lost or mailed twice.
"""

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from newsletter import storage
from newsletter.cli import cli
from newsletter.editions import send_day
from newsletter.storage import sqlite
from tests.test_delivery import DAY, ledger_rows
from tests.test_sending import sender, server  # noqa: F401  (fixtures)

COMMANDS = [
    ("send", "--date", DAY.isoformat()),
    ("send", "--dry-run", "--date", DAY.isoformat()),
    ("publish", "--date", DAY.isoformat()),
    ("status",),
    ("preview", "--date", DAY.isoformat()),
]


def invoke(tmp_path, *args):
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "newsletter.toml"), *args], env={"NEWSLETTER_SECRET": "s"}
    )
    return result.exit_code, result.stdout, result.stderr


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_corrupted_database_file_is_one_line_for_every_command_and_stays_untouched(sender, tmp_path, command):  # noqa: F811
    settings = sender(1, count=2)
    path = sqlite.db_path(settings.paths.state)
    path.parent.mkdir(parents=True)
    garbage = b"this was a newsletter state database once\n" * 200
    path.write_bytes(garbage)
    code, _, err = invoke(tmp_path, *command)
    assert code == 1
    assert one_error_line(err).startswith(f"Error: {path}: not a usable newsletter state database: restore it")
    assert "(file is not a database)" in err
    assert path.read_bytes() == garbage


def test_a_foreign_database_is_refused_and_not_migrated(sender, tmp_path):  # noqa: F811
    settings = sender(1, count=2)
    path = sqlite.db_path(settings.paths.state)
    path.parent.mkdir(parents=True)
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, title TEXT)")
    other.commit()
    other.close()
    before = path.read_bytes()
    for command in COMMANDS[:3]:
        code, _, err = invoke(tmp_path, *command)
        assert code == 1
        assert one_error_line(err) == (
            f"Error: {path}: not a newsletter state database (it holds other tables: photos); "
            "point paths.state at another folder, or move the file away\n"
        )
    assert path.read_bytes() == before


@contextlib.contextmanager
def read_only(folder):
    """Make a folder and its files read-only for this process: immutable for root (who ignores modes), 0555 else."""
    paths = [folder, *folder.iterdir()]
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
    else:
        for path in paths:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path in paths:
                path.chmod(0o755)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] in ("send", "publish")], ids=" ".join)
def test_a_read_only_state_folder_is_one_line_and_nobody_is_mailed(server, sender, tmp_path, command):  # noqa: F811
    smtp = server()
    settings = sender(smtp.port, count=3)
    storage.connect(settings).close()  # the database exists; the folder then turns read-only
    with read_only(settings.paths.state):
        code, _, err = invoke(tmp_path, *command)
    if command[1] == "--dry-run":
        assert code == 0  # a dry run only reads
        return
    assert code == 1
    assert one_error_line(err).startswith(f"Error: {sqlite.db_path(settings.paths.state)}: ")
    assert f"{settings.paths.state} is read-only or not writable for this user" in err or "cannot open it" in err
    assert smtp.handler.messages == []
    assert send_day(settings, DAY).delivered == 3  # once writable again, everyone gets one message


def test_a_disk_that_fills_up_mid_send_stops_with_one_line_and_a_rerun_mails_nobody_twice(server, sender, tmp_path):  # noqa: F811
    """The disk fills while the send runs: simulated with RLIMIT_FSIZE set on the running process
    (a write that crosses the limit is cut short, as on a full disk; SIGXFSZ is ignored)."""
    smtp = server()
    smtp.handler.delay = 0.03
    settings = sender(smtp.port, count=60, smtp="connections = 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")} | {"NEWSLETTER_SECRET": "s"}
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(tmp_path / "newsletter.toml"), "send", "--date", DAY.isoformat()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(smtp.handler.messages) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    wal = sqlite.db_path(settings.paths.state).with_name(sqlite.DB_NAME + "-wal")
    limit = wal.stat().st_size + 100  # the next commit's frames no longer fit
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    err = one_error_line(err.decode())
    assert err.startswith("Error: ") and (
        f"{sqlite.db_path(settings.paths.state)}: "
        "the disk could not be written (full, or failing): free some space or check the disk, then run the command again"
    ) in err  # SQLite reports a write cut short by the file size limit as an I/O error, a real full disk as "database or disk is full"
    # the first write past the limit is the journal's move into the ledger or the next claim: either stops the run
    before = len(smtp.handler.messages)
    assert before < 60, "the send must stop when nothing can be recorded"
    result = send_day(settings, DAY)
    rows = ledger_rows(settings)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    received = smtp.handler.recipients()
    assert set(received) == {f"reader{i}@example.com" for i in range(60)}
    assert len(received) - 60 <= 2, "at most one message per connection was sent and not recorded"
    assert result.delivered == 60 - before + (len(received) - 60)
