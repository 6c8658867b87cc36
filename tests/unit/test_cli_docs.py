"""The command lines README.md and docs/cli.md show are the ones `nodeheal` has: every documented command
answers `--help` (click's CliRunner, in process), and every `--option` a command line or a command's
section in docs/cli.md names is one of that command's options."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
CHOICES = re.compile(r"\{([a-z-]+(?:,[a-z-]+)+)\}")


def resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """The longest command path `words` starts with (`["bench", "kb", ...]` → `bench kb`)."""
    path: list[str] = []
    command: click.Command = cli
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        path.append(word)
        command = command.commands[word]
    return path, command


def options_of(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")} | {"--help"}


def choices_of(command: click.Command) -> set[str]:
    return {c for p in command.params if isinstance(p.type, click.Choice) for c in map(str, p.type.choices)}


def cli_md_sections() -> dict[str, str]:
    """docs/cli.md: `## \\`nodeheal X Y\\`` heading → the text of its section."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `nodeheal ([^`]+)`\s*$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def readme_command_lines() -> list[str]:
    """The README's command block, one command line each: comments cut off, `a | b` alternatives of one
    command kept together, `approve … | pause … | resume` split into its commands."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Command line", 1)[1].split("```", 2)[1]
    lines: list[str] = []
    for raw in block.splitlines():
        line = raw.split("   #", 1)[0].strip()
        if not line.startswith("nodeheal "):
            continue
        current = ""
        for segment in line.removeprefix("nodeheal ").split(" | "):
            if segment.split()[0] in cli.commands:  # type: ignore[attr-defined]
                if current:
                    lines.append(current)
                current = segment
            else:
                current += " | " + segment
        lines.append(current)
    return lines


SECTIONS = cli_md_sections()
README_LINES = readme_command_lines()


def test_the_documents_were_read() -> None:
    assert len(SECTIONS) >= 10 and "replay" in SECTIONS and "batch" in SECTIONS
    assert len(README_LINES) >= 12 and any(line.startswith("resume") for line in README_LINES)


@pytest.mark.parametrize("documented", sorted(SECTIONS))
def test_every_command_of_docs_cli_md_exists_and_takes_the_options_its_section_names(documented: str) -> None:
    words = documented.split()
    path, command = resolve(words)
    assert path, f"docs/cli.md documents `nodeheal {documented}`, which is no command"
    assert len(path) == sum(1 for w in words if not w.isupper() and not w.startswith(("-", "["))), (
        f"docs/cli.md documents `nodeheal {documented}`; only `nodeheal {' '.join(path)}` exists"
    )
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    unknown = sorted(set(OPTION.findall(SECTIONS[documented])) - options_of(command))
    assert not unknown, f"docs/cli.md's `nodeheal {documented}` section names options it does not take: {unknown}"
    named = {c for group in CHOICES.findall(SECTIONS[documented]) for c in group.split(",")}
    assert named <= choices_of(command), (
        f"docs/cli.md's `nodeheal {documented}`: no {sorted(named - choices_of(command))}"
    )


@pytest.mark.parametrize("line", README_LINES)
def test_every_command_line_of_the_readme_exists_with_its_options(line: str) -> None:
    path, command = resolve(line.split())
    assert path, f"README.md shows `nodeheal {line}`, which is no command"
    if isinstance(command, click.Group):
        pytest.fail(f"README.md shows `nodeheal {line}`: `{' '.join(path)}` needs a subcommand")
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    unknown = sorted(set(OPTION.findall(line)) - options_of(command))
    assert not unknown, f"README.md shows `nodeheal {line}` with options it does not take: {unknown}"
    named = {c for group in CHOICES.findall(line) for c in group.split(",")}
    assert named <= choices_of(command), f"README.md shows `nodeheal {line}`: no {sorted(named - choices_of(command))}"


def test_every_command_is_documented_in_docs_cli_md() -> None:
    """The other direction: a command (or a group's subcommand) without a section in docs/cli.md."""
    documented = {" ".join(resolve(name.split())[0]) for name in SECTIONS}
    commands: list[str] = []
    for name, command in sorted(cli.commands.items()):  # type: ignore[attr-defined]
        if isinstance(command, click.Group):
            commands += [f"{name} {sub}" for sub in sorted(command.commands)]
        else:
            commands.append(name)
    missing = [c for c in commands if c not in documented]
    assert not missing, f"no section in docs/cli.md for: {missing}"
