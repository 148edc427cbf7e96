"""Command lines whose every flag can also come from the environment, `<PREFIX><FLAG>` (how
the Helm chart configures the parts). Shared by vmgroup-webhook and vmgroup-controller."""

from __future__ import annotations

import argparse
import os
from importlib.metadata import version
from typing import Any


class EnvParser(argparse.ArgumentParser):
    def __init__(self, prog: str, description: str, env_prefix: str) -> None:
        super().__init__(prog=prog, description=description,
                         epilog=f"Every flag may be set as an environment variable "
                                f"{env_prefix}<FLAG>.")
        self.env_prefix = env_prefix
        self.add_argument("--version", action="version",
                          version=f"%(prog)s {version('vmgroup-operator')}")

    def env(self, flag: str, default: Any) -> Any:
        return os.environ.get(self.env_prefix + flag.upper().replace("-", "_"), default)

    def add(self, flag: str, default: Any, help: str, type: type = str) -> None:
        """`--flag`, defaulting to its environment variable, else `default` (None: required)."""
        self.add_argument(f"--{flag}", type=type, default=self.env(flag, default), help=help,
                          required=default is None and self.env(flag, None) is None)
