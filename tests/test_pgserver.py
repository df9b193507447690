"""The PostgreSQL the tests start is real: it accepts a login on 127.0.0.1 and keeps data."""

import psycopg
import pytest

from tests.pgserver import running_server


@pytest.fixture(scope="module")
def pg():
    with running_server({"work_mem": "8MB"}) as server:  # settings of its own, as a benchmark starts it
        yield server


def test_a_fresh_server_accepts_connections_and_keeps_rows(pg):
    url = pg.create_database("smoke")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n integer PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
