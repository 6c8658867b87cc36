"""`python -m nodeheal.sim.crictl --root DIR rmi --prune`: the simulated node's container runtime CLI.

The node agent's `clean_disk container-images` runs its configured prune command as a subprocess; on a
simulated node that command is this one. It removes the node's unused image blobs (the files under
`<root>/var/lib/containerd/io.containerd.content.v1.content/blobs/unused`) and prints what
`crictl rmi --prune` prints: one `Deleted: <image>` line per image."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nodeheal.sim.nodehost import IMAGES_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crictl")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("command", choices=["rmi"])
    parser.add_argument("--prune", action="store_true")
    args = parser.parse_args(argv)
    if not args.prune:
        sys.stderr.write("only `rmi --prune` is simulated\n")
        return 1
    blobs = args.root / IMAGES_DIR.lstrip("/")
    if blobs.is_dir():
        for entry in sorted(blobs.iterdir()):
            if entry.is_file() and not entry.is_symlink():
                os.unlink(entry)
                sys.stdout.write(f"Deleted: {entry.name.replace('-', ':', 1)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
