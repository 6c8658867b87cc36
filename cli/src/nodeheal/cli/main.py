"""`nodeheal`: one entry point, subcommands, `--help` everywhere.

Subcommands live in their own modules and are registered here; this module only wires them.
"""

from __future__ import annotations

import click

from nodeheal.cli.approve import approve, pause, resume
from nodeheal.cli.audit import audit
from nodeheal.cli.batch import batch
from nodeheal.cli.bench import bench
from nodeheal.cli.demo import demo
from nodeheal.cli.diagnose_log import diagnose_log
from nodeheal.cli.fleet import fleet
from nodeheal.cli.normalize import normalize
from nodeheal.cli.replay import replay
from nodeheal.cli.streams import streams
from nodeheal.cli.up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nodeheal")
def cli() -> None:
    """nodeheal keeps a Kubernetes fleet of bare-metal cloud machines healthy by itself.

    Find a broken node within 1 minute, know why within 5, repair it within 10.
    """


cli.add_command(demo)
cli.add_command(streams)
cli.add_command(up)
cli.add_command(normalize)
cli.add_command(diagnose_log)
cli.add_command(audit)
cli.add_command(replay)
cli.add_command(fleet)
cli.add_command(batch)
cli.add_command(bench)
cli.add_command(approve)
cli.add_command(pause)
cli.add_command(resume)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
