"""docs/CLI.md stays true to the command line: its commands and every flag of each, and ``hamer --help`` points to
what an installed package has."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hamer.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"
# Flags the page names that are not hamer's: OpenPose's output layout, a benchmark script's.
OTHER_PROGRAMS_FLAGS = {"--write_json", "--cold"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def long_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")} - {"--help"}


def sections() -> tuple[str, dict[str, str]]:
    """The page's introduction (before the first command) and each command's section, by command."""
    text = DOC.read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    return intro, dict(re.findall(r"^## `hamer (\w+)`[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M))


def test_the_page_has_a_section_per_command_and_counts_them():
    intro, by_command = sections()
    assert sorted(by_command) == sorted(commands())
    words = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five", 6: "Six", 7: "Seven"}
    assert intro.split("\n\n")[1].startswith(f"{words[len(commands())]} commands, ")
    for name in commands():
        assert f"`{name}`" in intro.split("\n\n")[1]


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_flag_of_a_command_is_documented_in_its_section(command):
    """A flag shared by several commands (``--data``, ``--checkpoint``) may be in the introduction instead."""
    intro, by_command = sections()
    documented = set(FLAG.findall(by_command[command])) | set(FLAG.findall(intro))
    assert long_flags(commands()[command]) - documented == set()


def test_every_flag_the_page_names_exists():
    known = set().union(*(long_flags(parser) for parser in commands().values())) | {"--help", "--version",
                                                                                  "--verbose"}
    assert set(FLAG.findall(DOC.read_text(encoding="utf-8"))) - known - OTHER_PROGRAMS_FLAGS == set()


def test_top_level_help_names_no_file_of_the_source_tree():
    out = subprocess.run([sys.executable, "-m", "hamer", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert ".md" not in out.stdout and "docs/" not in out.stdout
    assert "python -m hamer COMMAND --help" in " ".join(out.stdout.split())
    for name in commands():
        assert re.search(rf"^\s+{name}\s+\w", out.stdout, re.M), name
