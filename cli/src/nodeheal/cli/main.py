"""`nodeheal`: one entry point, subcommands, `--help` everywhere.

Subcommands live in their own modules and are registered here; this module only wires them. A
subcommand's module is imported when that subcommand is used (or listed by `--help`): `nodeheal
diagnose-log` does not load the Kubernetes client, nats-py and faststream that `batch` and `approve`
need (about a fifth of the start-up CPU, measured in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click

SUBCOMMANDS: dict[str, str] = {
    "demo": "nodeheal.cli.demo:demo",
    "streams": "nodeheal.cli.streams:streams",
    "up": "nodeheal.cli.up:up",
    "normalize": "nodeheal.cli.normalize:normalize",
    "diagnose-log": "nodeheal.cli.diagnose_log:diagnose_log",
    "audit": "nodeheal.cli.audit:audit",
    "replay": "nodeheal.cli.replay:replay",
    "fleet": "nodeheal.cli.fleet:fleet",
    "batch": "nodeheal.cli.batch:batch",
    "bench": "nodeheal.cli.bench:bench",
    "approve": "nodeheal.cli.approve:approve",
    "pause": "nodeheal.cli.approve:pause",
    "resume": "nodeheal.cli.approve:resume",
}
"""name → "module:attribute" of the click command."""


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands by name; a command's module is imported on first access to it."""

    def __init__(self, specs: dict[str, str]) -> None:
        self._specs = dict(specs)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, _, attr = self._specs[name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command) or command.name != name:
                msg = f"{self._specs[name]} is not the click command {name!r}"
                raise TypeError(msg)
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._specs.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._specs[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs


@click.group(commands=LazyCommands(SUBCOMMANDS), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nodeheal")
def cli() -> None:
    """nodeheal keeps a Kubernetes fleet of bare-metal cloud machines healthy by itself.

    Find a broken node within 1 minute, know why within 5, repair it within 10.
    """


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
