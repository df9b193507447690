"""Link tokens: one spelling, a random id and its HMAC, nothing that names the reader; the old form during the grace period."""

import base64
import binascii
from datetime import UTC, datetime, timedelta

import pytest

from newsletter import storage
from newsletter.tokens import (
    NO_ID,
    legacy_accepted,
    make_link_token,
    make_token,
    read_link_token,
    read_token,
)

ID = "3f2a9c4e1b7d6a5f8e0c2b4d6f8a1c3e"


def test_a_link_token_gives_back_its_id_and_nothing_else():
    token = make_link_token("secret", "list", ID, "unsubscribe")
    assert len(token) == 64 and token.startswith(ID)
    assert read_link_token("secret", "list", token, "unsubscribe") == ID


def respellings(token):
    """Every way the old form could be written differently, and a few more."""
    yield token.upper()
    yield token + "=="
    yield f" {token}"
    yield f"{token} "
    yield f"{token}\n"
    yield token[:32] + ".0." + token[32:]
    yield token[:32] + "." + token[32:]
    yield token + "0"
    yield token[:-1]
    yield token[:10] + ("0" if token[10] != "0" else "1") + token[11:]  # one altered byte in the id
    yield token[:-1] + ("0" if token[-1] != "0" else "1")  # one altered byte in the HMAC
    yield token.replace("a", "A", 1)


def test_every_other_spelling_is_refused():
    token = make_link_token("secret", "list", ID, "unsubscribe")
    for variant in respellings(token):
        assert variant != token
        assert read_link_token("secret", "list", variant, "unsubscribe") is None, repr(variant)


def test_forged_foreign_or_repurposed_tokens_are_refused():
    token = make_link_token("secret", "list", ID, "unsubscribe")
    assert read_link_token("other-secret", "list", token, "unsubscribe") is None
    assert read_link_token("secret", "another-list", token, "unsubscribe") is None
    assert read_link_token("secret", "list", token, "confirm") is None
    assert read_link_token("secret", "list", None, "unsubscribe") is None
    assert (
        read_link_token("secret", "list", make_link_token("secret", "list", NO_ID, "unsubscribe"), "unsubscribe")
        is None
    )
    with pytest.raises(ValueError):
        make_link_token("secret", "list", "ada@example.com", "unsubscribe")


def test_no_link_token_decodes_to_anything():
    token = make_link_token("secret", "list", ID, "unsubscribe")
    assert binascii.unhexlify(token[:32]).hex() == ID  # the id is random bytes; the rest is the HMAC
    assert base64.urlsafe_b64decode(token).find(b"example") == -1


def test_the_old_form_is_read_in_its_one_spelling_only():
    token = make_token("secret", "Ada@example.com", "daily.example.org")
    assert read_token("secret", token, "daily.example.org") == "Ada@example.com"
    payload, mac = token.split(".")
    for variant in (f"{token}==", f"{payload}.0.{mac}", f" {token} ", f"{payload}==.{mac}"):
        assert read_token("secret", variant, "daily.example.org") is None, variant


def test_old_forged_altered_or_foreign_tokens_are_refused():
    token = make_token("secret", "ada@example.com", "list")
    payload, mac = token.split(".")
    other = make_token("secret", "eve@example.com", "list").split(".")[0]
    assert read_token("other-secret", token, "list") is None
    assert read_token("secret", token, "another-list") is None
    assert read_token("secret", f"{other}.{mac}", "list") is None
    assert read_token("secret", token[:-2], "list") is None
    assert read_token("secret", "garbage", "list") is None
    assert read_token("secret", "!!.??", "list") is None


def test_an_old_confirmation_token_keeps_its_purpose_and_expiry():
    token = make_token("secret", "ada@example.com", "list", purpose="confirm", expires=2_000_000_000)
    assert read_token("secret", token, "list") is None
    assert read_token("secret", token, "list", purpose="confirm", now=1_000) == "ada@example.com"
    expiring = make_token("secret", "ada@example.com", "list", purpose="confirm", expires=1_000)
    assert read_token("secret", expiring, "list", purpose="confirm", now=999) == "ada@example.com"
    assert read_token("secret", expiring, "list", purpose="confirm", now=1_001) is None
    assert read_token("secret", expiring, "list", purpose="confirm") is None


def test_old_links_are_read_for_the_grace_period_only():
    since = datetime(2026, 12, 1, tzinfo=UTC)
    assert legacy_accepted(since, since + timedelta(days=179, hours=23), 180)
    assert not legacy_accepted(since, since + timedelta(days=180), 180)
    assert not legacy_accepted(since, since, 0)  # 0: refused from the upgrade on


def test_outbox_messages_carry_each_readers_own_working_link(settings, tmp_path):
    import email
    from datetime import date
    from email.utils import parseaddr

    from newsletter import state
    from newsletter.editions import dry_run
    from newsletter.render import list_id
    from newsletter.subscribers import Tally, sync_csv

    conn = storage.connect(settings)
    sync_csv(settings.paths.subscribers, conn, Tally())
    dry_run(settings, date(2026, 6, 24), outbox=tmp_path / "outbox")
    files = sorted((tmp_path / "outbox").iterdir())
    assert files
    for file in files:
        message = email.message_from_bytes(file.read_bytes())
        token = str(message["List-Unsubscribe"]).split("token=")[1].split(">")[0]
        public_id = state.find_subscriber(conn, parseaddr(message["To"])[1])["public_id"]
        assert read_link_token("test-secret", list_id(settings), token, "unsubscribe") == public_id
