"""`vmgroup-webhook`: serve the admission webhook (Flask under gunicorn, TLS)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vmgroup-webhook",
        description="Admission webhook of vmgroup-operator: defaults and validates VmGroups "
        "and injects initializers (sidecars, init containers) into workloads that ask for them.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {version('vmgroup-operator')}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    print("\nvmgroup-webhook: serving is not part of this build yet.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
