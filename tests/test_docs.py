"""The README and docs/ stay true to the CLI: every ``robustgen`` command in their bash blocks names
an existing verb with options it has, and every preset it names exists."""

import re
import shlex
from pathlib import Path

import click
import pytest

from robustgen.cli import cli
from robustgen.presets import list_presets

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[str]:
    """The robustgen command lines of a page's ```bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        lines = []
        for line in block.replace("\\\n", " ").splitlines():
            line = "" if line.strip().startswith("#") else line.split(" #")[0].strip()
            if lines and lines[-1].count("'") % 2:  # a quoted value may span lines
                lines[-1] += " " + line
            elif line:
                lines.append(line)
        for line in lines:
            for part in re.split(r"&&|;|\|", line):
                words = part.strip().split()
                if "robustgen.cli" in words:  # torchrun ... -m robustgen.cli VERB ...
                    part = "robustgen " + " ".join(words[words.index("robustgen.cli") + 1:])
                if part.strip().startswith("robustgen "):
                    commands.append(part.strip())
    return commands


CASES = [(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in _commands(page)]


def test_the_pages_have_commands():
    assert len(CASES) > 20 and any(page == "README.md" for page, _ in CASES)


@pytest.mark.parametrize("page,command", CASES)
def test_each_documented_command_parses(page, command):
    words = [w for w in shlex.split(command.replace("<", "").replace(">", ""))[1:] if w != "..."]  # ...: elided
    group, names = cli, []
    while isinstance(group, click.Group) and words and words[0] in group.commands:
        names.append(words[0])
        group = group.commands[words.pop(0)]
    assert names, f"{page}: {command}: no such verb"
    options = {opt for p in group.params for opt in (*p.opts, *p.secondary_opts)}
    for word in words:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{page}: {command}: {' '.join(names)} has no option {word}"
    arguments = [p for p in group.params if isinstance(p, click.Argument)]
    if arguments and arguments[0].name == "config" and words and not words[0].startswith("-"):
        first = words[0]
        if "/" not in first and not first.endswith((".yaml", ".yml")):
            assert first in list_presets(), f"{page}: {command}: no preset {first!r}"
