"""The documentation stays true: every configuration key is documented, the example file loads."""

import re
from dataclasses import fields
from pathlib import Path

from newsletter.config import SECTIONS, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_documents_every_configuration_key():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if f"`{s}.{f.name}`" not in readme]
    assert missing == []


def test_example_configuration_loads_and_lists_every_key(tmp_path):
    example = ROOT / "newsletter.example.toml"
    load_settings(example, env={})
    text = example.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in fields(cls):
            assert re.search(rf"^#? ?{f.name} = ", text, re.MULTILINE), f"{section}.{f.name}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    assert command in ci.splitlines()
