"""The subscriber list: streaming CSV, row validation with line numbers, duplicates, suppressions."""

import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter import state
from newsletter.errors import SubscriberError
from newsletter.storage import sqlite
from newsletter.subscribers import (
    DiskSet,
    Tally,
    _checked_domain,
    check_address,
    iter_recipients,
    read_csv,
    sync_csv,
    synced_recipients,
)


def write_csv(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_valid_rows_are_read_with_name_and_zone(tmp_path):
    path = write_csv(
        tmp_path / "s.csv", "email,name,timezone\nada@example.com,Ada Lovelace,Europe/London\nbob@example.org,,\n"
    )
    tally = Tally()
    rows = list(read_csv(path, tally))
    assert [(s.email, s.name, s.timezone) for s in rows] == [
        ("ada@example.com", "Ada Lovelace", "Europe/London"),
        ("bob@example.org", "", ""),
    ]
    assert tally.problems == []


def test_bad_rows_are_reported_with_their_line_and_skipped(tmp_path):
    text = (
        b"email,name,timezone\n"
        b"ok@example.com,Ok,\n"
        b"not-an-address,Bad,\n"
        b",No Email,\n"
        b"zone@example.com,Zone,Mars/Base\n"
        b"latin@example.com,Jos\xe9,\n"
        b"extra@example.com,A,UTC,surplus\n"
        b"last@example.com,Last,UTC\n"
    )
    path = write_csv(tmp_path / "s.csv", text)
    tally = Tally()
    emails = [s.email for s in read_csv(path, tally)]
    assert emails == ["ok@example.com", "last@example.com"]
    messages = [str(p) for p in tally.problems]
    assert messages[0].startswith(f"{path}:3: invalid email 'not-an-address'")
    assert messages[1] == f"{path}:4: missing email; row skipped"
    assert messages[2] == f"{path}:5: unknown time zone 'Mars/Base' for zone@example.com; row skipped"
    assert messages[3].startswith(f"{path}:6: not UTF-8 text")
    assert messages[4] == f"{path}:7: 4 fields, the header has 3; row skipped"


def test_a_file_without_an_email_column_is_one_clear_error(tmp_path):
    path = write_csv(tmp_path / "s.csv", "mail,name\nx@example.com,X\n")
    with pytest.raises(SubscriberError, match=r"s\.csv:1: no 'email' column"):
        list(read_csv(path, Tally()))


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(SubscriberError, match="cannot read the subscriber list"):
        list(read_csv(tmp_path / "none.csv", Tally()))


def test_duplicates_are_mailed_once_case_insensitively(tmp_path):
    path = write_csv(tmp_path / "s.csv", "email,name,timezone\nAda@Example.com,Ada,\nada@example.com,Ada again,\n")
    tally = Tally()
    assert [s.name for s in iter_recipients(path, None, tally)] == ["Ada"]
    assert tally.duplicates == 1


def test_suppression_always_wins_and_the_list_rules_its_own_rows(tmp_path):
    path = write_csv(tmp_path / "s.csv", "email,name,timezone\nada@example.com,Ada,\nbob@example.com,Bob,\n")
    conn = sqlite.connect(tmp_path / "var")
    state.suppress(conn, "BOB@example.com", "unsubscribed")
    state.add_subscriber(conn, "web@example.net", name="Web", timezone="Asia/Tokyo", source="web")
    state.add_subscriber(conn, "ada@example.com", name="Ada Web", source="web")
    tally = Tally()
    found = [(s.email, s.name, s.timezone) for s in iter_recipients(path, conn, tally)]
    assert found == [("ada@example.com", "Ada Web", ""), ("web@example.net", "Web", "Asia/Tokyo")]
    assert (tally.suppressed, tally.duplicates) == (1, 0)  # Ada in the file and on the list is one person


def test_the_shipped_example_list_is_valid_and_uses_reserved_domains():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "subscribers.example.csv"
    tally = Tally()
    rows = list(read_csv(path, tally))
    assert tally.problems == [] and len(rows) >= 3
    assert all(s.email.rsplit("@", 1)[1] in {"example.com", "example.org", "example.net"} for s in rows)


ADDRESSES = [
    "ada@example.com", "Ada.Lovelace@Example.COM", "a+tag@example.org", "o'brien@example.net",
    "x!#$%&'*+/=?^_`{|}~-y@example.com", "Postmaster@example.com", "SUPPORT@example.com",
    "a..b@example.com", ".a@example.com", "a.@example.com", "@example.com", "a@", "a@@example.com",
    "a@localhost", "a@example.invalid", "a@test", "a@-bad-.com", "a@exa_mple.com", "a@xn--bcher-kva.example",
    "a@bücher.example", "zoë@example.com", '"quoted"@example.com', "Ada <ada@example.com>", "a b@example.com",
    "a@[127.0.0.1]", "a@example..com", "a@.example.com", "a@example.com.", "a" * 64 + "@example.com",
    "a" * 65 + "@example.com", "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 60 + ".com",
    "a@" + "b" * 64 + ".com", "a@example.c", "a@123.example", "a@example.123",
]  # fmt: skip


@pytest.mark.parametrize("address", ADDRESSES)
def test_check_address_gives_the_libraries_answer(address):
    """The memoized fast path and email-validator itself agree on every address, valid or not."""
    try:
        expected = validate_email(address, check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError as exc:
        expected = f"error: {exc}"
    for _ in range(2):  # the second time the domain's verdict comes from the memo
        try:
            got = check_address(address)
        except ValueError as exc:
            got = f"error: {exc}"
        assert got == expected


def test_a_domain_is_validated_once_for_a_whole_list():
    _checked_domain.cache_clear()
    for i in range(100):
        check_address(f"reader{i}@lists.example.com")
    assert _checked_domain.cache_info().misses == 1


def test_the_seen_set_answers_the_same_in_memory_and_after_it_moves_to_disk():
    seen = DiskSet(in_memory=3)
    keys = ["a@x.org", "b@x.org", "a@x.org", "c@x.org", "d@x.org", "b@x.org", "e@x.org", "d@x.org"]
    assert [seen.add(key) for key in keys] == [True, True, False, True, True, False, True, False]
    assert seen._db is not None, "past its limit the set lives in a temporary file"
    seen.close()
    assert seen.add("a@x.org"), "a closed set starts empty"


def test_a_send_reads_the_file_once_and_sees_what_a_sync_then_a_read_would(tmp_path):
    rows = (
        "email,name,timezone,frequency\nada@example.com,Ada,,\nbob@example.com,Bob,,\nADA@example.com,Twice,,\n"
        "not-an-address,X,,\ncy@example.com,Cy,,weekly\ndee@example.com,Dee,Europe/Paris,\n"
    )
    path = write_csv(tmp_path / "s.csv", rows)
    outcomes = []
    for way in ("two reads", "one read"):
        conn = sqlite.connect(tmp_path / way)
        state.suppress(conn, "bob@example.com", "unsubscribed")
        state.add_subscriber(conn, "web@example.net", name="Web", source="web")
        state.add_subscriber(conn, "dee@example.com", name="Dee on the web", source="web")
        state.add_subscriber(conn, "gone@example.com", name="Gone", source="csv")  # from an older file
        tally = Tally()
        if way == "two reads":
            sync_csv(path, conn, Tally())
            found = list(iter_recipients(path, conn, tally))
        else:
            found = list(synced_recipients(path, conn, tally))
        listed = sorted(
            row["email"]
            for row in state.subscriber_rows_for(
                conn, ["ada@example.com", "cy@example.com", "gone@example.com"]
            ).values()
        )
        outcomes.append(
            (
                [(s.email, s.name, s.timezone) for s in found],
                (tally.invalid, tally.duplicates, tally.suppressed),
                listed,
            )
        )
        conn.close()
    assert outcomes[0] == outcomes[1]
    found, counts, listed = outcomes[1]
    assert found == [
        ("ada@example.com", "Ada", ""),
        ("dee@example.com", "Dee on the web", ""),
        ("web@example.net", "Web", ""),
    ]
    assert counts == (1, 1, 1) and listed == ["ada@example.com", "cy@example.com"], "the file is synced: gone left"


def test_the_list_beyond_the_file_is_read_in_chunks_in_the_same_order(tmp_path):
    conn = sqlite.connect(tmp_path / "var")
    for i in range(7):
        state.add_subscriber(conn, f"web{i}@example.net", source="web")
    whole = [row["email"] for row in state.subscriber_rows_not_from_csv(conn)]
    assert [row["email"] for row in state.subscriber_rows_not_from_csv(conn, chunk=3)] == whole
    assert sorted(whole) == [f"web{i}@example.net" for i in range(7)]
