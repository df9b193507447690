"""The site and the email in a real headless Chromium: a reader's walk through the pages, and axe-core.

One Chromium for the whole session and one `newsletter serve` for this module, on the
published bundled library (two or more articles a day). Needs Debian's `chromium` and
axe-core from `.ci/setup-extra`: without them these tests fail under CI=true and skip elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from newsletter import storage, tokens
from newsletter.config import Settings, load_settings
from newsletter.editions import edition_for
from newsletter.feeds import publish
from newsletter.render import list_id, render_digest, render_edition
from tests.cdp import AXE, Browser, Page, chromium_path, require
from tests.conftest import free_port

SECRET = "browser-test-secret"
DAY = date(2026, 6, 25)


@dataclass
class Site:
    settings: Settings
    base: str
    email: Path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    require("chromium", chromium_path() is not None, "add it to .ci/apt-packages or apt-get install chromium")
    chromium = Browser.launch(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    require("axe-core", AXE.is_file(), "run .ci/setup-extra (npm install axe-core into .ci/node)")
    return AXE.read_text(encoding="utf-8")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.new_page()
    try:
        yield tab
    finally:
        tab.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The bundled library published for June 25, 2026, served by `newsletter serve` on a free port."""
    root = tmp_path_factory.mktemp("site")
    port = free_port()
    config = root / "newsletter.toml"
    config.write_text(
        f'[newsletter]\nbase_url = "http://127.0.0.1:{port}/"\npostal_address = "1 Example Street, Springfield"\n'
        f'[paths]\nstate = "{root / "var"}"\npublic = "{root / "public"}"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, env={"NEWSLETTER_SECRET": SECRET})
    conn = storage.connect(settings)
    try:
        publish(settings, DAY, conn, now=datetime(2026, 6, 25, 12, 0, tzinfo=UTC))
        email = root / "email.html"
        email.write_text(render_edition(edition_for(DAY, settings, conn), settings).html, encoding="utf-8")
        week = [edition_for(DAY - timedelta(days=n), settings, conn) for n in (2, 1, 0)]
        (root / "digest.html").write_text(render_digest(week, settings).html, encoding="utf-8")
    finally:
        conn.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = SECRET
    with (root / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "--config", str(config), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base, timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"newsletter serve did not start: {(root / 'serve.log').read_text()}")
            time.sleep(0.1)
    try:
        yield Site(settings, base, email)
    finally:
        process.terminate()
        process.wait(timeout=10)


def heading(page: Page) -> str:
    return page.evaluate("document.querySelector('h1').textContent.trim()")


def test_a_reader_walks_from_a_day_to_its_neighbours_the_calendar_an_edition_and_the_form(page, site):
    base = site.base
    page.goto(base + "days/06-25/")
    assert heading(page) == "June 25 in history"
    assert page.evaluate("document.querySelectorAll('article.story').length") >= 2
    assert page.click('a[rel="prev"]') == base + "days/06-24/" and heading(page) == "June 24 in history"
    assert page.click('a[rel="next"]') == base + "days/06-25/"
    assert page.click('a[rel="next"]') == base + "days/06-26/"
    assert page.click('nav.way a[href$="/days/"]') == base + "days/"
    assert page.evaluate("document.querySelectorAll('.cal a').length") == 366
    assert page.click('.cal a[href$="/days/02-29/"]') == base + "days/02-29/"
    assert page.click('a[rel="next"]') == base + "days/03-01/"
    page.goto(base)
    assert page.click("ol.editions a") == base + "2026/06/25/"
    assert page.evaluate("document.querySelector('.badge').textContent") == "June 25"
    assert page.evaluate("document.querySelector('.also a').href").startswith(base + "days/06-25/#")
    assert page.click('nav.way a[href$="/days/06-25/"]') == base + "days/06-25/"
    page.goto(base + "2026/06/25/")
    assert page.click('footer a[href$="/subscribe"]') == base + "subscribe"
    assert page.evaluate(
        "!!document.querySelector('form input#email[type=email]') && !!document.querySelector('form button')"
    )


def form_urls(site: Site) -> dict[str, str]:
    token = tokens.make_token(SECRET, "ada@example.com", list_id(site.settings))
    return {
        "subscribe form": site.base + "subscribe",
        "unsubscribe form": site.base + f"unsubscribe?token={token}",
        "preferences form": site.base + f"preferences?token={token}",
        "message page": site.base + "confirm?token=not-a-token",
    }


PAGES = [
    "email", "weekly digest", "edition", "day", "calendar", "index", "month",
    "subscribe form", "unsubscribe form", "preferences form", "message page",
]  # fmt: skip


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("name", PAGES)
def test_axe_finds_no_serious_or_critical_violation(page, site, axe_source, name, scheme):
    urls = {
        "email": site.email.as_uri(),
        "weekly digest": site.email.with_name("digest.html").as_uri(),
        "edition": site.base + "2026/06/25/",
        "day": site.base + "days/06-25/",
        "calendar": site.base + "days/",
        "index": site.base,
        "month": site.base + "2026/06/",
        **form_urls(site),
    }
    page.color_scheme(scheme)
    page.goto(urls[name])
    if scheme == "dark":  # the emulation really applies: the page's own dark colours are in force
        assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    violations = [v for v in page.axe(axe_source) if v["impact"] in ("serious", "critical")]
    assert violations == []


@pytest.mark.parametrize("width", [375, 600])
def test_the_email_links_are_at_least_24_px_tall_on_a_phone_and_a_desktop(page, site, width):
    page.viewport(width, 900, mobile=width < 600)
    page.goto(site.email.as_uri())
    sizes = page.evaluate(
        "[...document.querySelectorAll('a.footer-link')].map(a => [a.textContent, a.getBoundingClientRect().height])"
    )
    assert [text for text, _ in sizes] == ["View in your browser", "All editions", "Preferences", "Unsubscribe"]
    assert all(height >= 24 for _, height in sizes), sizes
