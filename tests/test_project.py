"""The project frame: the README's two commands come first and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


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


def test_readme_is_short_and_every_docs_link_resolves():
    """The README is a five-minute guide; its depth lives in docs/, and every link between them
    (file and #anchor) points at something that exists."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 160
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 11
    for page in pages:
        text = page.read_text()
        if page.parent.name == "docs":  # each page starts with the command a user runs
            assert text.splitlines()[2].startswith("```bash"), page.name
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}: {target}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{page.name}: {target}"
