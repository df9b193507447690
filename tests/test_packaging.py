"""`pip install .` (not only -e) gives a working tool: the bundled data travels in the wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return next(out.glob("*.whl"))


def test_the_wheel_carries_events_templates_and_the_example_list(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "newsletter/_bundled/events/06/06-25-syrian-officers-defect-to-turkey.md" in names
    assert "newsletter/_bundled/subscribers.example.csv" in names
    assert any(n.startswith("newsletter/_bundled/templates/email/") for n in names)


def test_an_installed_wheel_finds_its_data_from_any_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=180,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    env = {k: v for k, v in env.items() if not k.startswith("NEWSLETTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "send", "--dry-run", "--date", "2026-06-25"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Syrian general" in result.stdout
    result = subprocess.run(
        [sys.executable, "-c", "from newsletter.config import load_settings as l; print(l(env={}).paths.events)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert str(target) in result.stdout
