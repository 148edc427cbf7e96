"""`vmgroup-controller`: reconcile VmGroups against vCenter."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vmgroup-controller",
        description="Controller of vmgroup-operator: clones, powers, resizes, scales and cleans "
        "up the vSphere VMs of every VmGroup and reports their status.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {version('vmgroup-operator')}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    print("\nvmgroup-controller: reconciling is not part of this build yet.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
