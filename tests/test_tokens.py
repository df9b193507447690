"""Signed link tokens: they carry their address, cannot be forged, and can expire."""

from newsletter.tokens import make_token, read_token


def test_a_token_gives_back_its_address():
    token = make_token("secret", "Ada@example.com", "daily.example.org")
    assert read_token("secret", token, "daily.example.org") == "Ada@example.com"


def test_forged_altered_or_foreign_tokens_are_refused():
    token = make_token("secret", "ada@example.com", "list")
    payload, mac = token.split(".")
    other = make_token("secret", "eve@example.com", "list").split(".")[0]
    assert read_token("other-secret", token, "list") is None
    assert read_token("secret", token, "another-list") is None
    assert read_token("secret", f"{other}.{mac}", "list") is None
    assert read_token("secret", token[:-2], "list") is None
    assert read_token("secret", "garbage", "list") is None
    assert read_token("secret", "!!.??", "list") is None


def test_a_token_for_one_purpose_is_refused_for_another():
    token = make_token("secret", "ada@example.com", "list", purpose="confirm", expires=2_000_000_000)
    assert read_token("secret", token, "list") is None
    assert read_token("secret", token, "list", purpose="confirm", now=1_000) == "ada@example.com"


def test_expiring_tokens_expire():
    token = make_token("secret", "ada@example.com", "list", purpose="confirm", expires=1_000)
    assert read_token("secret", token, "list", purpose="confirm", now=999) == "ada@example.com"
    assert read_token("secret", token, "list", purpose="confirm", now=1_001) is None
    assert read_token("secret", token, "list", purpose="confirm") is None
