"""Inlining: premailer's output, kept on disk so the next render of the same edition does not inline again."""

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest

from newsletter import inlining
from newsletter.config import bundled
from newsletter.events import load_events
from newsletter.render import render_edition
from newsletter.selection import select_edition
from tests.conftest import event_text, write_event
from tests.test_storage_errors import read_only

NOW = datetime(2026, 6, 25, 5, 0, tzinfo=UTC)
DAY = date(2026, 6, 24)


def render(settings):
    return render_edition(select_edition(DAY, load_events(settings.paths.events)), settings, now=NOW)


def entries(settings):
    return sorted((settings.paths.state / inlining.CACHE_FOLDER).glob("*.html"))


@pytest.fixture
def templates(tmp_path):
    """A copy of the bundled templates that a test may edit."""
    return shutil.copytree(bundled("templates"), tmp_path / "templates")


@pytest.fixture
def cached_settings(make_settings, event_folder, templates, tmp_path):
    """Settings whose state folder exists (an installation that has run before)."""
    (tmp_path / "var").mkdir()
    return make_settings(events=event_folder, templates=templates, state=tmp_path / "var")


def test_a_second_render_reads_the_same_bytes_from_the_cache(cached_settings, monkeypatch):
    first = render(cached_settings)
    assert len(entries(cached_settings)) == 1
    monkeypatch.setattr(inlining, "premailer_inline", lambda *args: pytest.fail("inlined again"))
    second = render(cached_settings)
    assert second.html.encode() == first.html.encode()
    assert second.text == first.text


def test_the_cache_holds_exactly_what_premailer_makes(make_settings, event_folder, templates, tmp_path):
    uncached = render(make_settings(events=event_folder, templates=templates, state=tmp_path / "absent"))
    (tmp_path / "var").mkdir()
    settings = make_settings(events=event_folder, templates=templates, state=tmp_path / "var")
    render(settings)  # writes the entry
    assert render(settings).html.encode() == uncached.html.encode()  # reads it


def test_a_changed_template_is_inlined_again(cached_settings, templates):
    before = render(cached_settings)
    layout = templates / "email" / "parts" / "layout.html"
    layout.write_text(layout.read_text().replace("</body>", "<p>A new closing line.</p></body>"))
    after = render(cached_settings)
    assert "A new closing line." in after.html and "A new closing line." not in before.html
    assert len(entries(cached_settings)) == 2


def test_a_changed_stylesheet_is_inlined_again(cached_settings, templates):
    before = render(cached_settings)
    css = templates / "email" / "email.css"
    css.write_text(css.read_text() + "\nbody { word-spacing: 3px; }\n")
    after = render(cached_settings)
    assert "word-spacing:3px" in after.html and "word-spacing" not in before.html


def test_a_changed_event_file_is_inlined_again(cached_settings, event_folder):
    before = render(cached_settings)
    write_event(event_folder, "06-24-first-thing.md", event_text("A June 24 event, retold", "1995-06-24"))
    after = render(cached_settings)
    assert "A June 24 event, retold" in after.html and "retold" not in before.html
    assert len(entries(cached_settings)) == 2


def test_a_damaged_entry_is_ignored_and_rewritten(cached_settings):
    first = render(cached_settings)
    (entry,) = entries(cached_settings)
    entry.write_bytes(entry.read_bytes()[:-100])  # cut short, as a full disk might leave it
    assert render(cached_settings).html == first.html
    assert inlining.read_cached(entry.parent, entry.stem) is not None


def test_no_state_folder_no_cache(make_settings, event_folder, tmp_path):
    settings = make_settings(events=event_folder, state=tmp_path / "var")
    render(settings)
    assert not (tmp_path / "var").exists()  # a dry run on a fresh install creates nothing


def test_a_read_only_state_folder_still_renders(cached_settings):
    with read_only(cached_settings.paths.state):
        assert "<html" in render(cached_settings).html
    assert entries(cached_settings) == []


def test_the_oldest_entries_are_pruned(tmp_path):
    folder = tmp_path / "inline"
    for n in range(5):
        inlining.write_cached(folder, f"{n:064x}", f"<p>{n}</p>")
    inlining.prune(folder, 3)
    assert len(list(folder.glob("*.html"))) == 3
    assert not list(folder.glob(".*.tmp"))


def test_premailer_loads_without_requests_which_it_imports_only_on_use():
    code = (
        "import sys; from newsletter import inlining; "
        "p = inlining.import_premailer(); print('requests' in sys.modules); "
        "import premailer.premailer as m; print(m.requests.Session.__module__, 'requests' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["False", "requests.sessions True"]


def test_a_repeat_run_in_a_new_process_does_not_load_premailer(cached_settings, tmp_path):
    render(cached_settings)
    code = (
        "import sys; from datetime import date; from newsletter.config import load_settings; "
        "from newsletter.editions import edition_for; from newsletter.render import render_edition; "
        f"s = load_settings({str(tmp_path / 'newsletter.toml')!r}, env={{'NEWSLETTER_SECRET': 'x'}}); "
        "render_edition(edition_for(date(2026, 6, 24), s, None), s, allow_insecure_secret=True); "
        "print(sorted(m for m in ('premailer', 'cssutils', 'requests') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip() == "[]"


def other_day(settings, day):
    return render_edition(select_edition(day, load_events(settings.paths.events)), settings, now=NOW)


def forget_premailers_memo():
    """What a new process starts with: premailer's in-memory caches empty."""
    from premailer.cache import cache

    cache.clear()


def test_a_new_edition_reuses_the_parse_of_our_stylesheet(cached_settings, make_settings, event_folder, templates,
                                                           tmp_path, monkeypatch):  # fmt: skip
    reference = other_day(make_settings(events=event_folder, templates=templates, state=tmp_path / "absent"),
                          date(2026, 6, 25))  # fmt: skip
    settings = make_settings(events=event_folder, templates=templates, state=tmp_path / "var")
    render(settings)  # June 24 teaches styles.json our stylesheet
    assert (settings.paths.state / inlining.CACHE_FOLDER / inlining.STYLES_FILE).is_file()
    forget_premailers_memo()
    import cssutils

    monkeypatch.setattr(cssutils.CSSParser, "parseString", lambda *a, **k: pytest.fail("parsed the stylesheet"))
    monkeypatch.setattr(cssutils.CSSParser, "parseStyle", lambda *a, **k: pytest.fail("parsed a declaration"))
    june25 = other_day(settings, date(2026, 6, 25))  # a new edition: inlined, without one cssutils parse
    assert june25.html.encode() == reference.html.encode()


def test_styles_of_other_library_versions_or_a_damaged_file_are_not_used(cached_settings):
    render(cached_settings)
    path = cached_settings.paths.state / inlining.CACHE_FOLDER / inlining.STYLES_FILE
    good = inlining.Styles.load(path)
    assert good.rules and good.pairs
    path.write_text(path.read_text().replace('"stamp": "', '"stamp": "0'))  # another premailer, another code
    assert not inlining.Styles.load(path).rules
    path.write_bytes(b'{"stamp": ')
    assert not inlining.Styles.load(path).pairs


def test_compiled_templates_are_kept_and_a_damaged_one_is_compiled_again(cached_settings, templates):
    first = render(cached_settings)
    compiled = sorted((cached_settings.paths.state / inlining.TEMPLATES_FOLDER).iterdir())
    assert compiled  # email.html, its layout and parts, email.txt
    for path in compiled:
        path.write_bytes(path.read_bytes()[:20])
    assert render(cached_settings).text == first.text
    layout = templates / "email" / "email.txt"
    layout.write_text(layout.read_text() + "A new last line.\n")
    assert "A new last line." in render(cached_settings).text


def test_the_quick_start_dry_run_never_imports_requests(tmp_path):
    """The README's first command, in a new process: premailer runs, requests (about 40 ms) is never loaded."""
    code = (
        "import sys; from newsletter.cli import main; sys.argv = ['newsletter', 'send', '--dry-run']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('premailer', 'requests', 'cryptography') if m in sys.modules), file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.stdout.startswith("date: ") and "recipients: 5" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "['premailer']"
    assert not (tmp_path / "var").exists()


def test_styles_of_many_edited_stylesheets_start_afresh(tmp_path):
    many = inlining.Styles({f"0:{n}": ([], []) for n in range(inlining.STYLES_LIMIT // 100 + 1)})
    many.changed = True
    many.save(tmp_path / "styles.json")
    assert inlining.Styles.load(tmp_path / "styles.json").rules == {}
