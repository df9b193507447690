"""The reader's preferences page, over HTTP against a real `newsletter serve` process."""

import re
from datetime import date

import httpx

from newsletter import state, storage
from newsletter.editions import send_day
from newsletter.subscribers import zone_choices
from tests.test_web import csrf_of, site, token_for  # noqa: F401  (site is a fixture)


def preferences_url(settings, address):
    return f"/preferences?token={token_for(settings, address)}"


def row(settings, address):
    return state.find_subscriber(storage.connect(settings), address)


def save(client, url, **fields):
    page = client.get(url)
    return client.post(url, data={"csrf": csrf_of(page), **fields})


def test_every_email_links_to_the_readers_preferences_page(site, smtp_server):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))
    (message,) = [m.message for m in smtp_server.handler.messages]
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    link = re.search(r'href="(http://127\.0\.0\.1:\d+/preferences\?token=[^"]+)"', html).group(1)
    assert link in text
    page = client.get(link)
    assert page.status_code == 200 and "ada@example.com" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_the_page_shows_the_choices_with_the_field_names_of_the_form(site):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))  # the CSV's Ada is now on the list
    page = client.get(preferences_url(settings, "ada@example.com"))
    assert page.status_code == 200
    for field in (
        'name="name"',
        'name="timezone"',
        'name="frequency" value="daily"',
        'name="frequency" value="weekly"',
    ):
        assert field in page.text
    weekdays = re.findall(r'<option value="(\w+day)"', page.text)
    assert weekdays == ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    zones = re.findall(r"<option(?: selected)?>([^<]+)</option>", page.text)
    assert zones == list(zone_choices()) and "Europe/Paris" in zones and "America/Argentina/Buenos_Aires" in zones
    assert page.text.count("<form") == 2 and 'action="unsubscribe?token=' in page.text  # unsubscribe: one click


def test_a_reader_changes_name_zone_and_frequency(site):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))
    url = preferences_url(settings, "ada@example.com")
    saved = save(client, url, name="Ada L.", timezone="Asia/Tokyo", frequency="weekly", weekday="friday")
    assert saved.status_code == 200 and "Saved" in saved.text and "on Friday" in saved.text
    got = row(settings, "ada@example.com")
    assert (got["name"], got["timezone"], got["frequency"], got["weekday"]) == (
        "Ada L.",
        "Asia/Tokyo",
        "weekly",
        "friday",
    )
    assert "<option selected>Asia/Tokyo</option>" in client.get(url).text
    back = save(client, url, name="Ada", timezone="", frequency="daily", weekday="friday")
    assert back.status_code == 200 and row(settings, "ada@example.com")["frequency"] == "daily"


def test_bad_choices_get_a_friendly_page_and_change_nothing(site):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))
    url = preferences_url(settings, "ada@example.com")
    for fields, words in (
        ({"timezone": "Mars/Base", "frequency": "daily"}, "time zone"),
        ({"frequency": "hourly"}, "daily or weekly"),
        ({"frequency": "weekly", "weekday": "someday"}, "day of the week"),
        ({"name": "n" * 101, "frequency": "daily"}, "at most 100"),
    ):
        bad = save(client, url, **fields)
        assert bad.status_code == 400 and words in bad.text and "Traceback" not in bad.text
    assert (
        row(settings, "ada@example.com")["frequency"] == "daily" and row(settings, "ada@example.com")["timezone"] == ""
    )


def test_the_form_is_protected_against_csrf_and_forged_links(site):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))
    url = preferences_url(settings, "ada@example.com")
    page = client.get(url)
    forged = httpx.post(str(client.base_url) + url, data={"csrf": csrf_of(page), "frequency": "weekly"})  # no cookie
    assert forged.status_code == 403 and row(settings, "ada@example.com")["frequency"] == "daily"
    altered = client.get(url[:-3] + "AAA")
    assert altered.status_code == 400
    assert client.get(preferences_url(settings, "stranger@example.org")).status_code == 404


def test_unsubscribe_is_one_click_from_the_page_and_the_pages_link_back(site):  # noqa: F811  (the imported fixture)
    settings, client = site
    send_day(settings, date(2026, 6, 24))
    page = client.get(preferences_url(settings, "ada@example.com"))
    action = re.search(r'<form method="post" action="(unsubscribe\?token=[^"]+)"', page.text).group(1)
    done = client.post("/" + action.replace("&amp;", "&"), data={"csrf": csrf_of(page)})
    assert done.status_code == 200 and "You are unsubscribed" in done.text and "preferences?token=" in done.text
    assert state.suppressed(storage.connect(settings)) == {"ada@example.com": "unsubscribed"}
    again = client.get(preferences_url(settings, "ada@example.com"))
    assert "We send nothing to this address now (unsubscribed)" in again.text
    unsubscribe_page = client.get(f"/unsubscribe?token={token_for(settings, 'ada@example.com')}")
    assert "preferences?token=" in unsubscribe_page.text


def test_the_signup_form_offers_the_real_zone_list_and_preselects_the_browsers_zone(site):  # noqa: F811  (the imported fixture)
    _, client = site
    page = client.get("/subscribe").text
    assert '<select id="timezone" name="timezone">' in page
    assert re.findall(r"<option>([^<]+)</option>", page) == list(zone_choices())
    assert "Intl.DateTimeFormat().resolvedOptions().timeZone" in page


def test_after_changing_zone_and_frequency_the_next_sends_follow_them(site, smtp_server, tmp_path):  # noqa: F811
    from click.testing import CliRunner

    from newsletter.cli import cli
    from newsletter.scheduler import Daily
    from tests.test_scheduler import utc

    settings, client = site
    conn = storage.connect(settings)
    state.add_subscriber(conn, "bob@example.org", name="Bob", source="cli")  # stays daily, in the newsletter's zone
    send_day(settings, date(2026, 6, 24))  # Wednesday: both get the daily edition
    saved = save(
        client, preferences_url(settings, "ada@example.com"), name="Ada", timezone="Asia/Tokyo", frequency="weekly",
        weekday="thursday",
    )  # fmt: skip
    assert saved.status_code == 200
    outbox = tmp_path / "outbox"
    runner = CliRunner()
    for day in ("2026-06-24", "2026-06-25"):  # the next sends, written out instead of sent
        runner.invoke(cli, ["--config", str(settings.source), "send", "--outbox", str(outbox), "--date", day])
    files = sorted(p.name for p in outbox.iterdir())
    assert files == ["2026-06-25_ada@example.com.eml", "2026-06-25_bob@example.org.eml"]  # June 24: both had theirs
    digest = (outbox / "2026-06-25_ada@example.com.eml").read_text()
    assert "your week, June 25" in digest  # her first digest starts after the daily she already had
    assert "your week" not in (outbox / "2026-06-25_bob@example.org.eml").read_text()
    smtp_server.handler.messages.clear()
    Daily(settings).beat(utc(2026, 6, 24, 22, 5))  # 07:05 on Thursday in Tokyo; still Wednesday night in UTC
    assert [(m.rcpt_tos[0], ".digest." in m.message["Message-ID"]) for m in smtp_server.handler.messages] == [
        ("ada@example.com", True)
    ]


def test_a_zone_the_browser_named_outside_the_list_survives_a_form_sent_back(site):  # noqa: F811
    _, client = site
    form = client.get("/subscribe")
    back = client.post(
        "/subscribe", data={"csrf": csrf_of(form), "email": "not an address", "timezone": "Asia/Calcutta"}
    )
    assert back.status_code == 400 and "<option selected>Asia/Calcutta</option>" in back.text
