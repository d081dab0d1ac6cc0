"""The project frame: the README's two commands come first and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```bash")
    commands = _readme_commands()
    assert text.count("```bash", 0, text.index("---")) == 2
    assert first_block < 300
    for command in commands[:2]:
        assert "\n" not in command
        assert command.startswith("python3 -m venv ")
        assert "pip install" in command


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert "set -euo pipefail" in ci


def test_ci_installs_the_browser_before_the_tests():
    """The results-page test renders in headless Chromium; CI must have it when pytest runs."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(i for i, line in enumerate(ci) if "apt-get install" in line and
                   "chromium" in line)
    assert install < ci.index(_readme_commands()[1])
