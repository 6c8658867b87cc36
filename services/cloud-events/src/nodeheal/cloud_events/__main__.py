"""`python -m nodeheal.cloud_events ingest|prober|inventory`: one entry point, three processes.

The node agent is its own distribution and image (`python -m nodeheal.agent`).

Each part lives in `nodeheal.cloud_events.<part>.main` with a `main()` that reads its own settings
from the environment (`NODEHEAL_<PART>_...`) and runs until SIGTERM.
"""

from __future__ import annotations

import importlib
import sys

from nodeheal.runtime.usage import exit_on_args

PARTS = ("ingest", "prober", "inventory")
SUMMARIES = {
    "ingest": "cloud system events: HTTP endpoints and pollers → CLOUD stream",
    "prober": "checks every node's reachability from outside",
    "inventory": "keeps nodeheal-inventory from the Kubernetes Nodes",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in PARTS:
        shown = repr(args[0]) if args and args[0] not in ("-h", "--help") else "nothing"
        print(  # noqa: T201 - this is the usage text
            f"usage: python -m nodeheal.cloud_events {{{'|'.join(PARTS)}}}  (got {shown})\n"
            + "".join(f"  {part:<10} {text}\n" for part, text in SUMMARIES.items())
            + "Each part is configured by environment variables (`PART --help` lists them); see docs/cloud-events.md.",
            file=sys.stderr,
        )
        return 0 if args and args[0] in ("-h", "--help") else 2
    part = args[0]
    # the process's whole import graph first: `PART --help` is a dry start that proves the install
    module = importlib.import_module(f"nodeheal.cloud_events.{part}.main")
    settings = importlib.import_module(f"nodeheal.cloud_events.{part}.settings")
    exit_on_args(
        args[1:],
        prog=f"python -m nodeheal.cloud_events {part}",
        summary=SUMMARIES[part],
        settings=getattr(settings, f"{part.capitalize()}Settings"),
    )
    result = module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
