"""Take the README's screenshots in headless Chromium: `python -m tests.screenshots docs/`.

The June 25, 2026 edition of the bundled library, as an email (600 px, a 375 px phone, dark
mode) and on the site (its day page, the calendar), published into a temporary folder.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from newsletter import storage
from newsletter.config import load_settings
from newsletter.editions import edition_for
from newsletter.feeds import publish
from newsletter.render import render_edition
from tests.cdp import Browser

DAY = date(2026, 6, 25)


def main(out: Path) -> None:
    root = Path(tempfile.mkdtemp())
    settings = load_settings(None, env={"NEWSLETTER_SECRET": "screenshots"})
    paths = dataclasses.replace(settings.paths, state=root / "var", public=root / "public")
    settings = dataclasses.replace(settings, paths=paths)
    conn = storage.connect(settings)
    publish(settings, DAY, conn, now=datetime(2026, 6, 25, 12, tzinfo=UTC))
    email = root / "email.html"
    email.write_text(render_edition(edition_for(DAY, settings, conn), settings).html, encoding="utf-8")
    conn.close()
    browser = Browser.launch(root / "profile")
    page = browser.new_page()
    public = settings.paths.public
    shots = [
        (email.as_uri(), "email-600.png", 680, "light", False),
        (email.as_uri(), "email-375.png", 375, "light", True),
        (email.as_uri(), "email-dark-375.png", 375, "dark", True),
        ((public / "days" / "06-25" / "index.html").as_uri(), "day-page.png", 760, "light", False),
        ((public / "days" / "index.html").as_uri(), "calendar.png", 760, "light", False),
    ]
    try:
        for url, name, width, scheme, mobile in shots:
            page.viewport(width, 1400, mobile)
            page.color_scheme(scheme)
            page.goto(url)
            page.screenshot(out / name, full_page=name != "day-page.png")
            print(f"wrote {out / name}")
    finally:
        page.close()
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
