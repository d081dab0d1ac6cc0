"""The project frame: the README's two commands come first and CI runs the test one verbatim."""

from __future__ import annotations

import os
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


# --------------------------------------------------------------- nothing outside the repository

DESIGN_FILE = "DESIGN" + ".md"  # the old contract's name, written apart so this file lacks it
OUTSIDE = re.compile(r"(?<![\w./])\.\./[^\s`'\")\]}]*")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|Users)/\w")
NOT_THE_PROJECT = {".git", "build", "dist", "runs", "cuda-check-out", "__pycache__",
                   ".pytest_cache", ".ruff_cache", ".t2s_cache"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".json",
                 ".html", ".css", ".js", ""}


def _project_text_files() -> list[Path]:
    """The checkout's text files, without virtual environments, build outputs and runs (pruned
    as the walk goes: a runs/ folder can hold gigabytes)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not (
            d in NOT_THE_PROJECT or d.startswith(".venv") or d.endswith(".egg-info"))]
        found += [Path(folder) / f for f in files if Path(f).suffix in TEXT_SUFFIXES]
    return found


def outside_references(relative: str, text: str) -> list[str]:
    """What in `text` (the file at `relative` in the repository) needs something outside it:
    the old contract file, this machine's absolute paths, or a path that climbs out of the
    checkout (from the file for a Markdown link, from the root where commands run otherwise).
    The one exception: a page of docs/ may say which outside folder a run read its clips from
    (`--data`, then a folder beside the checkout): data the user supplies, not the project's."""
    found = [f"{relative}: names {DESIGN_FILE}"] if DESIGN_FILE in text else []
    found += [f"{relative}: {m.group(0)}..." for m in MACHINE_PATH.finditer(text)]
    root = Path("/repository")
    for match in OUTSIDE.finditer(text):
        link = text[:match.start()].endswith("](")
        base = (root / relative).parent if link else root
        target = Path(os.path.normpath(base / match.group(0)))
        if target == root or root in target.parents:
            continue
        if (not link and relative.startswith("docs/")
                and text[:match.start()].endswith("--data ")):
            continue
        found.append(f"{relative}: {match.group(0)}")
    return found


def test_outside_references_are_found():
    up = ".." + "/"  # written apart, so that this file itself climbs nowhere
    assert outside_references("docs/a.md", f"see [x]({up}README.md) and [y]({up}{up}y.md)") == [
        f"docs/a.md: {up}{up}y.md"]
    assert outside_references("benchmarks/x.sh", f"DATA=${{DATA:-{up}shared/clips}}") == [
        f"benchmarks/x.sh: {up}shared/clips"]
    assert outside_references("docs/a.md", f"t2s-demo --data {up}shared/clips") == []
    assert outside_references("tests/t.py", f"--data {up}shared/clips") != []
    assert outside_references("x.py", f"the contract ({DESIGN_FILE})") == [
        f"x.py: names {DESIGN_FILE}"]
    assert outside_references("x.py", "open('/" + "work/shared/a')") == ["x.py: /" + "work/s..."]
    assert outside_references("x.py", "~/.cache/huggingface and runs/demo") == []


def test_nothing_in_the_project_refers_to_files_outside_it():
    """The whole design is in docs/architecture.md, and no code, script, test or page needs a
    file from beside the checkout: whoever clones the project has all of it."""
    files = _project_text_files()
    assert len(files) > 100
    found = [ref for path in files
             for ref in outside_references(path.relative_to(ROOT).as_posix(),
                                           path.read_text(encoding="utf-8", errors="replace"))]
    assert found == [], "\n".join(found)
