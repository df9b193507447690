"""The web side, as a real server process on 127.0.0.1, driven by a real HTTP client."""

import base64
import binascii
import contextlib
import re
import secrets
import subprocess
import sys
import time
from datetime import date

import httpx
import pytest

from newsletter import state, storage, subscribers, tokens
from newsletter.config import bundled
from newsletter.editions import send_day, send_test_copy
from newsletter.render import list_id
from tests.conftest import free_port, strict_html, subprocess_env

SECRET = "web-test-secret"


@pytest.fixture
def site(make_settings, event_folder, tmp_path, smtp_server, request):
    """Settings for a site whose mail goes to the test SMTP server, and a running `newsletter serve`.

    Parametrized indirectly, the parameter is more of the [web] section.
    """
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name,timezone\nada@example.com,Ada,\n", encoding="utf-8")
    port = free_port()
    toml = (
        f'[newsletter]\nbase_url = "http://127.0.0.1:{port}/"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n[web]\nsignup_limit = 2\n'
        + getattr(request, "param", "")
    )
    settings = make_settings(
        toml,
        env={"NEWSLETTER_SECRET": SECRET},
        events=event_folder,
        state=tmp_path / "var",
        public=tmp_path / "public",
        subscribers=csv,
    )
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.html").write_text("<h1>Archive</h1>")
    env = subprocess_env(NEWSLETTER_SECRET=SECRET)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(tmp_path / "newsletter.toml"),
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=(tmp_path / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip  (a file, not a pipe nobody reads: a chatty server must never block)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    with httpx.Client(base_url=base, timeout=10) as client:
        yield settings, client
    process.terminate()
    process.wait(timeout=10)


def token_for(settings, address, purpose="unsubscribe"):
    """The token of a reader's links, by the public id the list gave them (the CSV synced first).

    For an address not on the list: a well-made token of an id nobody has.
    """
    conn = storage.connect(settings)
    subscribers.sync_csv(settings.paths.subscribers, conn, subscribers.Tally())
    row = state.find_subscriber(conn, address)
    public_id = row["public_id"] if row is not None else secrets.token_hex(16)
    return tokens.make_link_token(SECRET, list_id(settings), public_id, purpose)


def legacy_token_for(settings, address):
    """An unsubscribe token of the old form (the address inside), as in links mailed before the upgrade."""
    return tokens.make_token(SECRET, address, list_id(settings))


def suppressed(settings):
    return state.suppressed(storage.connect(settings))


def csrf_of(response):
    return re.search(r'name="csrf" value="([^"]+)"', response.text).group(1)


def test_one_click_unsubscribe_as_mailbox_providers_send_it(site):
    settings, client = site
    response = client.post(
        f"/unsubscribe?token={token_for(settings, 'ada@example.com')}", data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    assert suppressed(settings) == {"ada@example.com": "unsubscribed"}
    again = client.post(
        f"/unsubscribe?token={token_for(settings, 'ada@example.com')}", data={"List-Unsubscribe": "One-Click"}
    )
    assert again.status_code == 200  # twice is fine


def test_forged_or_altered_tokens_get_400_and_change_nothing(site):
    settings, client = site
    public_id = token_for(settings, "ada@example.com")[:32]
    forged = tokens.make_link_token("another-secret", list_id(settings), public_id, "unsubscribe")
    for token in (forged, token_for(settings, "ada@example.com")[:-3] + "AAA", "nonsense", ""):
        response = client.post(f"/unsubscribe?token={token}", data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 400
        assert "Traceback" not in response.text
    assert suppressed(settings) == {}


def test_the_links_of_a_test_copy_to_an_address_not_on_the_list_say_so_and_change_nothing(site, smtp_server):
    settings, client = site
    send_test_copy(settings, date(2026, 6, 25), "me@example.org")
    (message,) = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == ["me@example.org"]]
    token = str(message["List-Unsubscribe"]).split(",")[0].strip().strip("<>").split("token=")[1]
    assert token[:32] == tokens.NO_ID, "no reader behind it: no reader's id in it"
    for path in ("/unsubscribe", "/preferences"):
        page = client.get(f"{path}?token={token}")
        assert page.status_code == 200 and "This link is from a test copy" in page.text
    assert client.post(f"/unsubscribe?token={token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert suppressed(settings) == {}
    altered = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert client.get(f"/unsubscribe?token={altered}").status_code == 400


def test_the_unsubscribe_link_of_a_reader_no_longer_on_the_list_says_so(site):
    settings, client = site
    token = token_for(settings, "gone@example.org")  # well made, for an id nobody has (any more)
    page = client.get(f"/unsubscribe?token={token}")
    assert page.status_code == 200 and "You are not on our list" in page.text
    assert client.post(f"/unsubscribe?token={token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert suppressed(settings) == {}


def test_the_unsubscribe_page_has_one_button_protected_against_csrf(site):
    settings, client = site
    url = f"/unsubscribe?token={token_for(settings, 'ada@example.com')}"
    page = client.get(url)
    assert page.status_code == 200 and page.text.count("<button") == 1 and "ada@example.com" in page.text
    forged = httpx.post(str(client.base_url) + url, data={"csrf": "guess"})  # no cookie: a cross-site post
    assert forged.status_code == 403 and suppressed(settings) == {}
    done = client.post(url, data={"csrf": csrf_of(page)})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert suppressed(settings) == {"ada@example.com": "unsubscribed"}


def test_double_opt_in_from_form_to_first_newsletter(site, smtp_server):
    settings, client = site
    form = client.get("/subscribe")
    response = client.post(
        "/subscribe",
        data={"csrf": csrf_of(form), "email": "new@example.org", "name": "New Reader", "timezone": "Europe/Paris"},
    )
    assert response.status_code == 200 and "Check your inbox" in response.text
    conn = storage.connect(settings)
    assert conn.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0  # not before confirming
    (confirmation,) = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == ["new@example.org"]]
    link = re.search(r"(http://127\.0\.0\.1:\d+/confirm\?token=\S+)", confirmation.get_content()).group(1)
    confirmed = confirm(client, link)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    row = conn.execute("SELECT email, name, timezone FROM subscribers").fetchone()
    assert tuple(row) == ("new@example.org", "New Reader", "Europe/Paris")
    smtp_server.handler.messages.clear()
    send_day(settings, date(2026, 6, 24))
    assert sorted(smtp_server.handler.recipients()) == ["ada@example.com", "new@example.org"]


def test_an_expired_confirmation_link_is_refused(site):
    settings, client = site
    expired = tokens.make_token(
        SECRET, "late@example.org", list_id(settings), purpose="confirm", expires=int(time.time()) - 1
    )
    for response in (client.get(f"/confirm?token={expired}"), client.post(f"/confirm?token={expired}")):
        assert response.status_code == 400 and "expired" in response.text
    assert storage.connect(settings).execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0


def test_an_unsubscribe_token_cannot_confirm_a_signup(site):
    settings, client = site
    assert client.get(f"/confirm?token={token_for(settings, 'x@example.org')}").status_code == 400


def test_signup_without_the_csrf_cookie_is_refused(site, smtp_server):
    _, client = site
    form = client.get("/subscribe")
    response = httpx.post(str(client.base_url) + "/subscribe", data={"csrf": csrf_of(form), "email": "x@example.org"})
    assert response.status_code == 403
    assert smtp_server.handler.messages == []


def test_repeated_signups_are_rate_limited_and_reveal_nothing(site, smtp_server):
    _, client = site
    answers = []
    for _ in range(3):
        form = client.get("/subscribe")
        answers.append(client.post("/subscribe", data={"csrf": csrf_of(form), "email": "ada@example.com"}))
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].text == answers[1].text  # an existing subscriber gets the same answer as anyone
    assert len(smtp_server.handler.messages) == 2


def test_bad_input_gets_a_friendly_page(site):
    _, client = site
    form = client.get("/subscribe")
    bad = client.post("/subscribe", data={"csrf": csrf_of(form), "email": "not an address", "timezone": "Mars/Base"})
    assert bad.status_code == 400 and "does not look right" in bad.text and "Traceback" not in bad.text
    form = client.get("/subscribe")
    zone = client.post("/subscribe", data={"csrf": csrf_of(form), "email": "z@example.org", "timezone": "Mars/Base"})
    assert zone.status_code == 400 and "time zone" in zone.text


def test_the_favicon_is_served_before_anything_is_published(site):
    response = site[1].get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/vnd.microsoft.icon"
    assert response.content == (bundled("templates") / "web" / "favicon.ico").read_bytes()
    assert response.content[:4] == b"\0\0\1\0"  # an ICO file
    assert site[1].head("/favicon.ico").status_code == 200


def test_the_public_folder_is_served(site):
    _, client = site
    assert "<h1>Archive</h1>" in client.get("/").text
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and "Not here" in missing.text


def sign_up(client, email, name="", timezone=""):
    form = client.get("/subscribe")
    return client.post("/subscribe", data={"csrf": csrf_of(form), "email": email, "name": name, "timezone": timezone})


def confirmation_links(smtp_server, address):
    return [
        re.search(r"(http://127\.0\.0\.1:\d+/confirm\?token=\S+)", m.message.get_content()).group(1)
        for m in smtp_server.handler.messages
        if m.rcpt_tos == [address]
    ]


def confirm(client, link):
    """Open a confirmation link and press its one button, as a person does."""
    page = client.get(link)
    if page.status_code != 200:
        return page
    return client.post(link, data={"csrf": csrf_of(page)})


def dump(settings):
    """Every row of the state database, to show that a request changed nothing."""
    with storage.connect(settings) as db:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in db.tables()}


def web_subscriber(settings, address):
    row = (
        storage.connect(settings)
        .execute("SELECT name, timezone FROM subscribers WHERE email = ?", (address,))
        .fetchone()
    )
    return tuple(row) if row else None


def test_opening_a_confirmation_link_twice_changes_nothing(site, smtp_server):
    settings, client = site
    sign_up(client, "twice@example.org", "Grace", "Europe/Berlin")
    (link,) = confirmation_links(smtp_server, "twice@example.org")
    assert confirm(client, link).status_code == 200
    before = dump(settings)
    again = confirm(client, link)
    assert again.status_code == 410 and "already been used" in again.text
    assert web_subscriber(settings, "twice@example.org") == ("Grace", "Europe/Berlin")
    assert dump(settings) == before


def test_each_link_confirms_its_own_request_not_a_later_one(site, smtp_server):
    settings, client = site
    sign_up(client, "own@example.org", "Grace Hopper", "America/New_York")
    sign_up(client, "own@example.org", "Someone Else", "Asia/Tokyo")  # anyone can type an address
    first, second = confirmation_links(smtp_server, "own@example.org")
    confirm(client, first)
    assert web_subscriber(settings, "own@example.org") == ("Grace Hopper", "America/New_York")


def test_a_mail_server_that_cannot_take_the_confirmation_gets_an_honest_page(site, smtp_server):
    settings, client = site
    smtp_server.handler.drop = 1  # the connection breaks at DATA
    down = sign_up(client, "later@example.org")
    assert down.status_code == 503 and "try again" in down.text and "Check your inbox" not in down.text
    conn = storage.connect(settings)
    assert conn.execute("SELECT COUNT(*) FROM signup_requests").fetchone()[0] == 0
    smtp_server.handler.reject["nobody@example.org"] = "550 5.1.1 no such user"
    refused = sign_up(client, "nobody@example.org")
    assert refused.status_code == 200 and "Check your inbox" in refused.text  # reveals nothing about the address


def test_two_forms_open_at_once_both_work(site, smtp_server):
    _, client = site
    first, second = client.get("/subscribe"), client.get("/subscribe")
    for form, address in ((second, "tab2@example.org"), (first, "tab1@example.org")):
        answer = client.post("/subscribe", data={"csrf": csrf_of(form), "email": address})
        assert answer.status_code == 200, answer.text
    assert {m.rcpt_tos[0] for m in smtp_server.handler.messages} == {"tab1@example.org", "tab2@example.org"}


def test_every_response_carries_security_headers_and_form_pages_are_never_cached(site):
    _, client = site
    for path in ("/", "/subscribe", "/no/such/page"):
        response = client.get(path)
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert client.get("/subscribe").headers["cache-control"] == "no-store"
    assert "no-store" not in client.get("/").headers.get("cache-control", "")


def test_an_oversized_form_gets_a_friendly_413(site, smtp_server):
    _, client = site
    form = client.get("/subscribe")
    huge = client.post("/subscribe", data={"csrf": csrf_of(form), "email": "x@example.org", "name": "n" * 20000})
    assert huge.status_code == 413 and "too much" in huge.text and "Traceback" not in huge.text
    chunked = client.post(  # no Content-Length: counted as it arrives
        "/subscribe",
        content=iter([b"email=x%40example.org&name=", b"n" * 20000]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert chunked.status_code == 413 and "too much" in chunked.text
    assert smtp_server.handler.messages == []


def test_the_access_log_never_records_link_tokens(site, tmp_path):
    settings, client = site
    token = token_for(settings, "ada@example.com")
    assert client.get(f"/unsubscribe?token={token}").status_code == 200
    time.sleep(0.3)  # let the server flush its log line
    log = (tmp_path / "serve.log").read_text()
    assert "/unsubscribe?token=" in log and token not in log


def test_confirming_an_address_that_bounced_says_delivery_is_on_hold(site, smtp_server):
    settings, client = site
    conn = storage.connect(settings)
    state.suppress(conn, "held@example.org", "bounced", "550 no such user")
    sign_up(client, "held@example.org")
    (link,) = confirmation_links(smtp_server, "held@example.org")
    page = confirm(client, link)
    assert page.status_code == 200 and "on hold" in page.text and "You are subscribed" not in page.text
    assert state.suppressed(conn) == {"held@example.org": "bounced"}


def test_get_and_head_of_a_confirmation_link_change_nothing(site, smtp_server):
    settings, client = site
    sign_up(client, "scanned@example.org", "Scanned")
    (link,) = confirmation_links(smtp_server, "scanned@example.org")
    before = dump(settings)
    for _ in range(3):  # a mail scanner, a link preview, a prefetching browser
        head = client.head(link)
        assert head.status_code == 200 and head.headers["cache-control"] == "no-store"
        page = client.get(link)
        assert page.status_code == 200 and page.text.count("<button") == 1 and 'method="post"' in page.text
        assert "You are subscribed" not in page.text
        strict_html(page.text)
    assert dump(settings) == before
    assert web_subscriber(settings, "scanned@example.org") is None


def test_only_the_post_of_the_button_confirms_and_it_needs_the_form(site, smtp_server):
    settings, client = site
    sign_up(client, "pressed@example.org", "Pressed", "Europe/Rome")
    (link,) = confirmation_links(smtp_server, "pressed@example.org")
    cross_site = httpx.post(link, data={"csrf": "guess"})  # no cookie: not our page's button
    assert cross_site.status_code == 403 and web_subscriber(settings, "pressed@example.org") is None
    done = confirm(client, link)
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert web_subscriber(settings, "pressed@example.org") == ("Pressed", "Europe/Rome")
    (preferences,) = re.findall(r'href="(preferences\?token=[0-9a-f]+)"', done.text)  # every page a reader reaches
    page = client.get("/" + preferences)
    assert page.status_code == 200 and 'value="Pressed"' in page.text


def unsubscribe_one_click(settings, client, address):
    response = client.post(f"/unsubscribe?token={token_for(settings, address)}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200


def test_a_used_confirmation_link_changes_nothing_after_an_unsubscribe(site, smtp_server):
    settings, client = site
    sign_up(client, "gone@example.org")
    (link,) = confirmation_links(smtp_server, "gone@example.org")
    confirm(client, link)
    unsubscribe_one_click(settings, client, "gone@example.org")
    before = dump(settings)
    page = client.get(link)
    assert page.status_code == 410 and "<button" not in page.text
    assert client.post(link, data={"csrf": csrf_of(client.get("/subscribe"))}).status_code == 410
    assert dump(settings) == before
    assert suppressed(settings) == {"gone@example.org": "unsubscribed"}


def test_a_superseded_confirmation_link_changes_nothing_after_an_unsubscribe(site, smtp_server):
    settings, client = site
    sign_up(client, "twolinks@example.org", "First")
    sign_up(client, "twolinks@example.org", "Second")
    first, second = confirmation_links(smtp_server, "twolinks@example.org")
    confirm(client, first)
    unsubscribe_one_click(settings, client, "twolinks@example.org")
    before = dump(settings)
    assert confirm(client, second).status_code == 410
    assert dump(settings) == before
    assert suppressed(settings) == {"twolinks@example.org": "unsubscribed"}


def test_a_link_sent_before_an_unsubscribe_never_subscribes(site, smtp_server):
    settings, client = site
    sign_up(client, "early@example.org")
    (link,) = confirmation_links(smtp_server, "early@example.org")
    legacy = legacy_token_for(settings, "early@example.org")  # the reader said no before confirming
    assert client.post(f"/unsubscribe?token={legacy}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert confirm(client, link).status_code == 410
    assert web_subscriber(settings, "early@example.org") is None
    assert suppressed(settings) == {"early@example.org": "unsubscribed"}


def test_signing_up_again_after_an_unsubscribe_works_with_the_new_link(site, smtp_server):
    settings, client = site
    sign_up(client, "back@example.org")
    confirm(client, confirmation_links(smtp_server, "back@example.org")[0])
    unsubscribe_one_click(settings, client, "back@example.org")
    sign_up(client, "back@example.org", "Back Again")
    assert "You are subscribed" in confirm(client, confirmation_links(smtp_server, "back@example.org")[-1]).text
    assert suppressed(settings) == {}


def test_every_page_of_the_web_side_parses_under_a_strict_html5_parser_and_has_its_head(site):
    settings, client = site
    pages = {
        "/subscribe": 200,
        f"/unsubscribe?token={token_for(settings, 'ada@example.com')}": 200,
        "/confirm?token=nonsense": 400,
        "/no-such-page": 404,
    }
    for path, status in pages.items():
        response = client.get(path)
        assert response.status_code == status
        strict_html(response.text)
        assert '<meta name="description" content="' in response.text
        assert 'rel="icon" href="' in response.text and '<meta property="og:title"' in response.text
    assert (
        '<link rel="canonical" href="' + settings.newsletter.base_url + 'subscribe">' in client.get("/subscribe").text
    )


# Link tokens: a random id and its HMAC, one spelling, nothing that names the reader.


def edition_link_token(settings, smtp_server, address="ada@example.com"):
    """The unsubscribe token in the List-Unsubscribe header of a real edition sent to an address."""
    smtp_server.handler.messages.clear()
    send_day(settings, date(2026, 6, 24))
    (message,) = [m.message for m in smtp_server.handler.messages if m.rcpt_tos == [address]]
    https = str(message["List-Unsubscribe"]).split(",")[0].strip().strip("<>")
    return https.split("token=")[1]


def decodings(token):
    """What someone holding a token could try to read out of it."""
    yield token.encode()
    for decode in (bytes.fromhex, base64.urlsafe_b64decode, base64.b64decode, base64.b32decode):
        with contextlib.suppress(ValueError, binascii.Error):
            yield decode(token.upper() if decode is base64.b32decode else token + "=" * (-len(token) % 4))


def test_no_token_in_an_edition_or_a_confirmation_decodes_to_an_address(site, smtp_server):
    settings, client = site
    unsubscribe = edition_link_token(settings, smtp_server)
    sign_up(client, "private@example.org")
    (link,) = confirmation_links(smtp_server, "private@example.org")
    confirmation = link.split("token=")[1]
    for token, address in ((unsubscribe, b"ada@example.com"), (confirmation, b"private@example.org")):
        assert tokens.LINK_TOKEN.fullmatch(token)
        for decoded in decodings(token):
            assert address not in decoded.lower() and address.split(b"@")[1] not in decoded.lower()


def test_every_altered_spelling_of_a_token_is_refused_and_changes_nothing(site, smtp_server):
    settings, client = site
    token = edition_link_token(settings, smtp_server)
    legacy = legacy_token_for(settings, "ada@example.com")
    payload, mac = legacy.split(".")
    variants = [
        token.upper(), token + "==", f" {token}", f"{token} ", token[:32] + ".0." + token[32:], token + "0",
        token[:-1], token[:-1] + ("1" if token[-1] == "0" else "0"), token[:5] + ("1" if token[5] == "0" else "0") + token[6:],
        f"{legacy}==", f"{payload}.0.{mac}", f" {legacy}", f"{payload}==.{mac}", legacy.upper(),
    ]  # fmt: skip
    before = dump(settings)
    for variant in variants:
        one_click = client.post("/unsubscribe", params={"token": variant}, data={"List-Unsubscribe": "One-Click"})
        page = client.get("/unsubscribe", params={"token": variant})
        assert (one_click.status_code, page.status_code) == (400, 400), repr(variant)
    assert dump(settings) == before and suppressed(settings) == {}
    done = client.post("/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and suppressed(settings) == {"ada@example.com": "unsubscribed"}


def test_old_form_links_still_work_within_the_grace_period(site):
    settings, client = site
    legacy = legacy_token_for(settings, "ada@example.com")  # a link mailed before the upgrade
    page = client.get(f"/unsubscribe?token={legacy}")
    assert page.status_code == 200 and "ada@example.com" in page.text
    assert client.post(f"/unsubscribe?token={legacy}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert suppressed(settings) == {"ada@example.com": "unsubscribed"}


def test_the_log_masks_addresses(site, smtp_server, tmp_path):
    settings, client = site
    client.post(f"/unsubscribe?token={token_for(settings, 'ada@example.com')}", data={"List-Unsubscribe": "One-Click"})
    sign_up(client, "masked@example.org")
    confirm(client, confirmation_links(smtp_server, "masked@example.org")[0])
    time.sleep(0.3)  # let the server flush its log
    log = (tmp_path / "serve.log").read_text()
    assert "a***@example.com" in log and "m***@example.org" in log
    assert "ada@example.com" not in log and "masked@example.org" not in log


def test_get_and_head_change_nothing_anywhere_on_the_site(site, smtp_server):
    settings, client = site
    sign_up(client, "visitor@example.org")
    (link,) = confirmation_links(smtp_server, "visitor@example.org")
    unsubscribe = f"/unsubscribe?token={token_for(settings, 'ada@example.com')}"
    before = dump(settings)
    for path in (link, unsubscribe, "/subscribe", "/", "/no/such/page"):
        client.head(path)
        client.get(path)
    assert dump(settings) == before and suppressed(settings) == {}


@pytest.mark.parametrize("site", ["legacy_link_days = 0\n"], indirect=True)
def test_old_form_links_are_refused_after_the_grace_period(site):
    settings, client = site
    legacy = legacy_token_for(settings, "ada@example.com")
    assert client.get(f"/unsubscribe?token={legacy}").status_code == 400
    assert client.post(f"/unsubscribe?token={legacy}", data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert suppressed(settings) == {}
    fresh = token_for(settings, "ada@example.com")  # the links of every edition since the upgrade
    assert client.post(f"/unsubscribe?token={fresh}", data={"List-Unsubscribe": "One-Click"}).status_code == 200


@pytest.mark.parametrize("site", ["confirm_hours = 0.0005\n"], indirect=True)  # 1.8 seconds
def test_a_confirmation_link_expires(site, smtp_server):
    settings, client = site
    sign_up(client, "slow@example.org")
    (link,) = confirmation_links(smtp_server, "slow@example.org")
    time.sleep(3)
    page = client.get(link)
    assert page.status_code == 400 and "expired" in page.text
    assert client.post(link, data={"csrf": csrf_of(client.get("/subscribe"))}).status_code == 400
    assert web_subscriber(settings, "slow@example.org") is None
