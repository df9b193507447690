"""The event library: loading, and every rule of `events check`."""

from pathlib import Path

import pytest

from newsletter.events import (
    SUBJECTS,
    balance,
    check_library,
    era_of,
    find_dates,
    load_events,
    load_library,
    parse_event_file,
)
from tests.conftest import event_text, write_event

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "example-event-page.txt"


def problems_of(path: Path) -> list[str]:
    return [f"{p.severity}: {p.message}" for p in parse_event_file(path)[1]]


def test_a_valid_file_loads_with_every_field(tmp_path):
    path = write_event(tmp_path, "06-25-defection.md", event_text("Officers defect", "2012-06-25"))
    event, problems = parse_event_file(path)
    assert problems == []
    assert event.id == "06-25-defection"
    assert (event.year, event.month, event.day) == (2012, 6, 25)
    assert event.date_label == "June 25" and event.year_label == "2012"
    assert event.tags == ("history", "test")
    assert event.reading[0].title == "A Real Book" and event.reading[0].author == "A. Real Author"
    assert [s.heading for s in event.sections] == ["What happened", "Why it mattered", "What followed"]


def test_bc_dates_are_supported(tmp_path):
    path = write_event(tmp_path, "03-15-ides.md", event_text("Caesar is killed", "44-03-15 BC"))
    event, problems = parse_event_file(path)
    assert problems == []
    assert event.year == -44 and event.year_label == "44 BC"
    assert event.years_before(2026) == 2069  # there is no year 0


@pytest.mark.parametrize("field", ["title", "summary", "subject", "tags", "fun_fact", "reading", "sources", "date"])
def test_a_missing_field_is_an_error_naming_it(tmp_path, field):
    lines = [line for line in event_text().splitlines() if not line.startswith(f"{field}:")]
    if field in ("reading", "sources"):
        lines = [line for line in lines if not line.startswith(("  -", "    author"))]
        lines = lines if field == "sources" else [*lines[:6], 'sources: ["Wikipedia: X"]', *lines[6:]]
    path = write_event(tmp_path, "06-25-x.md", "\n".join(lines))
    assert f"error: field '{field}' is missing" in problems_of(path)


def test_an_empty_field_is_an_error_with_its_line(tmp_path):
    path = write_event(tmp_path, "06-25-x.md", event_text(summary='""'))
    (problem,) = [p for p in parse_event_file(path)[1] if p.severity == "error"]
    assert problem.message == "field 'summary' is empty"
    assert problem.line == 4
    assert str(problem).startswith(f"{path}:4: error:")


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("2012-02-30", "bad date '2012-02-30': no such day"),
        ("2011-02-29", "bad date '2011-02-29': no such day"),
        ("1900-02-29", "bad date '1900-02-29': no such day"),
        ("2012-13-01", "bad date '2012-13-01': no such day"),
        ("June 25 2012", "bad date 'June 25 2012'"),
        ("0-06-25", "there is no year 0"),
    ],
)
def test_bad_dates_are_errors(tmp_path, when, message):
    text = event_text().replace("date: 2012-06-25", f"date: {when}")
    path = write_event(tmp_path, "06-25-x.md", text)
    assert any(message in p for p in problems_of(path)), problems_of(path)


def test_file_name_must_match_the_date(tmp_path):
    path = write_event(tmp_path, "07-02-x.md", event_text(when="2012-06-25"))
    assert any("does not match the file name 07-02-x.md" in p for p in problems_of(path))


def test_unknown_subject_is_an_error(tmp_path):
    path = write_event(tmp_path, "06-25-x.md", event_text(subject="gossip"))
    assert any("unknown subject 'gossip'" in p for p in problems_of(path))


def test_body_without_sections_is_an_error(tmp_path):
    front, _, _ = event_text().partition("## What happened")
    path = write_event(tmp_path, "06-25-x.md", front)
    assert "error: the body has no sections (start each with a '## Heading' line)" in problems_of(path)


def test_empty_section_is_an_error(tmp_path):
    text = event_text().replace("## Why it mattered\n", "## Why it mattered\n\n## Empty one\n")
    path = write_event(tmp_path, "06-25-x.md", text)
    assert any("section 'Why it mattered' is empty" in p for p in problems_of(path))


def test_text_before_the_first_section_is_an_error(tmp_path):
    text = event_text().replace("## What happened", "Stray paragraph.\n\n## What happened")
    path = write_event(tmp_path, "06-25-x.md", text)
    assert any("text before the first '## ' section heading" in p for p in problems_of(path))


@pytest.mark.parametrize("link", ["[see](wikipedia.org/wiki/X)", "[see](javascript:alert(1))", "[see](https://)"])
def test_malformed_links_are_errors(tmp_path, link):
    text = event_text().replace("## Why it mattered\n\n", f"## Why it mattered\n\nRead {link} now. ")
    path = write_event(tmp_path, "06-25-x.md", text)
    assert any("malformed link" in p for p in problems_of(path)), problems_of(path)


def test_malformed_source_url_is_an_error(tmp_path):
    text = event_text().replace('"Wikipedia: Test event"', "htp//en.wikipedia.org/wiki/X")
    path = write_event(tmp_path, "06-25-x.md", text)
    assert any("malformed source URL" in p for p in problems_of(path))


def test_good_links_pass(tmp_path):
    text = event_text().replace(
        "## Why it mattered\n\n", "## Why it mattered\n\nSee [the article](https://en.wikipedia.org/wiki/Syria). "
    )
    path = write_event(tmp_path, "06-25-x.md", text)
    assert problems_of(path) == []


def test_broken_yaml_is_reported_with_its_line(tmp_path):
    text = event_text().replace("summary: Something", "summary: [unclosed")
    path = write_event(tmp_path, "06-25-x.md", text)
    event, problems = parse_event_file(path)
    assert event is None
    assert problems[0].message.startswith("front matter is not valid YAML")


def test_missing_front_matter_and_bad_encoding_are_errors(tmp_path):
    plain = write_event(tmp_path, "06-25-plain.md", "## Heading\n\ntext\n")
    latin = write_event(tmp_path, "06-25-latin.md", "x")
    latin.write_bytes(event_text().encode("utf-8").replace(b"thing", "\u00e9t\u00e9".encode("latin-1")))
    assert "error: missing front matter: the file must start with a line '---'" in problems_of(plain)
    assert any("not UTF-8 text" in p for p in problems_of(latin))


def test_warnings_for_length_sections_unknown_keys_and_summary(tmp_path):
    text = event_text(sections=2, extra_front="color: blue", summary="x" * 210)
    path = write_event(tmp_path, "06-25-x.md", text)
    warnings = [p for p in problems_of(path) if p.startswith("warning")]
    assert any("unknown field 'color'" in w for w in warnings)
    assert any("body has 2 sections" in w for w in warnings)
    assert any("body has" in w and "words; write 200 to 500" in w for w in warnings)
    assert any("summary has 210 characters" in w for w in warnings)


# The date-contradiction check: the flaw of the reference page.


def test_first_section_dating_the_event_differently_is_an_error(tmp_path):
    first = "On July 2, 2012, a significant event unfolded when officers defected. " * 3
    path = write_event(tmp_path, "06-25-x.md", event_text("Officers defect", "2012-06-25", first=first))
    event, problems = parse_event_file(path)
    assert event is None
    (error,) = [p for p in problems if p.severity == "error"]
    assert error.message == "the first section dates the event 'July 2, 2012' but its date is 2012-06-25"
    assert error.line == 18


def test_summary_dating_the_event_differently_is_an_error(tmp_path):
    path = write_event(tmp_path, "06-25-x.md", event_text(summary="On 2 July 2012 officers crossed the border."))
    assert "error: the summary dates the event '2 July 2012' but its date is 2012-06-25" in problems_of(path)


def test_yearless_wrong_day_in_the_first_section_is_an_error(tmp_path):
    first = "On the night of July 2, the officers crossed the border. " * 3
    path = write_event(tmp_path, "06-25-x.md", event_text(first=first))
    assert any("dates the event 'July 2'" in p for p in problems_of(path))


def test_other_years_and_later_sections_may_mention_other_dates(tmp_path):
    first = "The uprising had begun on March 15, 2011. On June 25, 2012, officers defected. " * 3
    text = event_text(first=first).replace(
        "## What followed\n\n", "## What followed\n\nOn July 2, 2012, more followed. "
    )
    path = write_event(tmp_path, "06-25-x.md", text)
    assert problems_of(path) == []


def test_a_text_that_never_states_its_day_is_warned(tmp_path):
    path = write_event(tmp_path, "06-25-x.md", event_text(first="Officers defected that summer. " * 10))
    assert any("never states the event's day (June 25)" in p for p in problems_of(path))


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/reference is not beside this checkout")
def test_the_reference_page_flaw_is_caught(tmp_path):
    """The reference page is filed under June 25 but its text dates the event July 2, 2012."""
    page = REFERENCE.read_text(encoding="utf-8")
    first = page.split("The Defection of Syrian Army Officers\n\n", 1)[1].split("\n\n", 1)[0]
    path = write_event(tmp_path, "06-25-reference.md", event_text("Defection", "2012-06-25", first=first))
    assert "error: the first section dates the event 'July 2, 2012' but its date is 2012-06-25" in problems_of(path)


def test_find_dates_reads_common_forms():
    found = [
        (m.month, m.day, m.year)
        for m in find_dates(
            "On July 20, 1969, 20 July 1969, March 15, 44 BC, the 4th of July; June 25, 33 soldiers; May 1968"
        )
    ]
    assert found == [(7, 20, 1969), (7, 20, 1969), (3, 15, -44), (7, 4, None), (6, 25, None)]


# The library as a whole.


def test_one_broken_file_never_stops_the_others(event_folder):
    write_event(event_folder, "06-26-broken.md", "no front matter")
    library = load_library(event_folder)
    assert len(library.events) == 5
    assert [p.path.name for p in library.errors] == ["06-26-broken.md"]
    assert [e.id for e in load_events(event_folder)] == [e.id for e in library.events]


def test_duplicate_events_are_errors(event_folder):
    write_event(event_folder, "06-25-syrian-defection-copy.md", event_text("Syrian officers defect!", "2012-06-25"))
    library = load_library(event_folder)
    (error,) = library.errors
    assert error.message.startswith("duplicate event: same as")
    assert {error.path.name, Path(error.message.rsplit(" ", 1)[1]).name} == {
        "06-25-syrian-defection.md",
        "06-25-syrian-defection-copy.md",
    }
    assert len(library.events) == 5


def test_coverage_counts_calendar_days(event_folder):
    assert load_library(event_folder).coverage() == 4


def test_region_is_optional_and_must_be_a_known_one(tmp_path):
    good = write_event(tmp_path, "06-25-good.md", event_text(extra_front="region: middle-east"))
    bad = write_event(tmp_path, "06-25-bad.md", event_text(extra_front="region: atlantis"))
    assert not [p for p in problems_of(good) if "region" in p or "unknown field" in p]
    assert any("error: unknown region 'atlantis'" in p for p in problems_of(bad))


# The library as a whole: days with fewer than two articles, alike pairs, balance.


def test_era_boundaries():
    cases = {-44: "ancient", 499: "ancient", 500: "medieval", 1499: "medieval", 1500: "early modern",
             1799: "early modern", 1800: "19th century", 1900: "20th century", 1999: "20th century",
             2000: "21st century", 2026: "21st century"}  # fmt: skip
    assert {year: era_of(year) for year in cases} == cases


def test_days_with_fewer_than_two_articles_are_one_warning_naming_the_first_few(event_folder):
    library = load_library(event_folder)
    assert len(library.thin_days()) == 365  # only June 25 has two
    (warning,) = check_library(library)
    assert str(warning) == (
        f"{event_folder}: warning: 365 days have fewer than two articles: "
        "January 1, January 2, January 3, January 4, January 5 and 360 more"
    )


def test_a_day_whose_articles_share_era_and_subject_is_a_warning(event_folder):
    write_event(event_folder, "06-25-zz-war-too.md", event_text("Another war", "1975-06-25", subject="war"))
    write_event(event_folder, "06-24-other-era.md", event_text("Older", "1895-06-24"))  # differs in era: fine
    (alike,) = [p for p in check_library(load_library(event_folder)) if p.path.name != "events"]
    assert alike.path.name == "06-25-zz-war-too.md" and alike.severity == "warning"
    assert alike.message.startswith("same era (20th century) and subject (war) as 06-25-korean-war-begins.md")


def test_balance_counts_subjects_eras_and_regions(event_folder):
    write_event(event_folder, "06-24-ancient.md", event_text("Old", "44-06-24 BC", extra_front="region: europe"))
    counts = balance(load_library(event_folder))
    assert counts.total == 6
    assert (counts.subjects["politics"], counts.subjects["war"], counts.war_share) == (5, 1, 1 / 6)
    assert list(counts.subjects) == list(SUBJECTS)
    assert counts.eras == {"ancient": 1, "medieval": 0, "early modern": 0, "19th century": 0,
                           "20th century": 4, "21st century": 1}  # fmt: skip
    assert (counts.regions["europe"], counts.regions["unset"]) == (1, 5)
