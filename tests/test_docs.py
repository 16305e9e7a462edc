"""The documentation cannot drift: docs/cli.md is what the parser renders now, and no relative link is dead.

``make docs`` writes docs/cli.md from :func:`arielstream.cli.app.cli_reference` (every sub-command's
help, usage and options; the options' help texts are ``--help``'s, from the one descriptions table).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from arielstream.cli.app import build_parser, cli_reference

from .conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# [text](target) and ![alt](target), not inside code spans; targets with a scheme or only an anchor are skipped
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # fenced code
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_benchmarks_summary_is_made_from_its_sections():
    from benchmarks import summary

    text = (REPO / "BENCHMARKS.md").read_text()
    assert summary.refreshed(text) == text, "BENCHMARKS.md's summary is out of date: python -m benchmarks.summary"
    # a row the sections no longer hold is an error naming it, not a shorter table
    broken = text.replace("| **arielstream**, default profile, one worker", "| arielstream, one worker", 1)
    with pytest.raises(summary.SummaryError, match="bench section: no row starting"):
        summary.render(broken)
    # the bench's own row with other numbers, as a rerun writes it: the summary follows
    row = re.search(r"^\| \*\*arielstream\*\*, default profile, one worker[^|]*\| ([\d.]+) \| (\d+) \|", text, re.M)
    assert row is not None
    rerun = row.group(0).replace(f"| {row.group(1)} | {row.group(2)} |", "| 9.87 | 321 |")
    assert "9.87 s per observation, 321 MB" in summary.render(text.replace(row.group(0), rerun, 1))


def test_cli_reference_is_current():
    committed = (DOCS / "cli.md").read_text()
    assert committed == cli_reference(), "docs/cli.md is out of date with the parser: run `make docs`"


def test_cli_reference_names_every_command_and_option():
    text = cli_reference()
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, command in sub.choices.items():
        assert f"## arielstream {name}\n" in text
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files(page: Path):
    dead = []
    for target in relative_links(page.read_text()):
        path = unquote(target.split("#", 1)[0])
        if not (page.parent / path).exists():
            dead.append(target)
    assert not dead, f"{page.relative_to(REPO)}: links to missing files: {dead}"


def test_link_checker_sees_links():
    assert relative_links("[a](docs/x.md#y) `[b](no.md)` [c](https://e.org) ![i](p.png)") == ["docs/x.md#y", "p.png"]


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "pip install --no-deps /path" not in text
    assert "pip install --no-index --no-deps /kaggle/input/" in text
    for page in [REPO / "README.md", *DOCS.glob("*.md"), REPO / "CONTRIBUTING.md"]:
        assert "--no-deps /path/to/arielstream" not in page.read_text(), page
