"""Command lines whose every flag can also come from the environment, `<PREFIX><FLAG>` (how
the Helm chart configures the parts), and the one way both parts reach the API server.

A mistake on the command line, in the environment or in what a flag points at is one line on
stderr naming the problem and the fix, and exit code 2: never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from importlib.metadata import version
from typing import Any, NoReturn

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """What the user configured cannot work; the message says what and how to fix it."""


class EnvParser(argparse.ArgumentParser):
    def __init__(self, prog: str, description: str, env_prefix: str) -> None:
        super().__init__(prog=prog, description=description,
                         epilog=f"Every flag may be set as an environment variable "
                                f"{env_prefix}<FLAG>.")
        self.env_prefix = env_prefix
        self.add_argument("--version", action="version",
                          version=f"%(prog)s {version('vmgroup-operator')}")

    def env_name(self, flag: str) -> str:
        return self.env_prefix + flag.upper().replace("-", "_")

    def env(self, flag: str, default: Any) -> Any:
        return os.environ.get(self.env_name(flag), default)

    def add(self, flag: str, default: Any, help: str, type: type = str,
            choices: tuple[str, ...] | None = None) -> None:
        """`--flag`, defaulting to its environment variable, else `default` (None: required).
        A value from the environment is held to the flag's type and choices too."""
        value = self.env(flag, default)
        if (raw := self.env(flag, None)) is not None:
            try:
                value = type(raw)
            except ValueError:
                self.error(f"{self.env_name(flag)}={raw!r} is not a valid {type.__name__}")
            if choices and value not in choices:
                self.error(f"{self.env_name(flag)}={raw!r}: choose from {', '.join(choices)}")
        self.add_argument(f"--{flag}", type=type, default=value, help=help, choices=choices,
                          required=default is None and raw is None)

    def error(self, message: str) -> NoReturn:
        """One line, exit 2 (argparse would print the whole usage first)."""
        fail(self.prog, f"{message} (see {self.prog} --help)")


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(2)


def client_parts_only() -> None:
    """From now on, `import kubernetes.<part>` loads that part of the official client alone.

    The package's `__init__` imports every part eagerly, and with `config` the kubeconfig
    loader's OAuth and OIDC stack (requests, oauthlib, requests_oauthlib), with `stream` a
    WebSocket client: 6.5 MB of resident memory that a controller in a Pod never uses (it reads
    its service account). The parts run unchanged; only the two package `__init__`s are left
    out (what they import, a part imports itself when it needs it). Nothing to do once
    `kubernetes` is imported: the parts are then already there.
    """
    if "kubernetes" in sys.modules:
        return
    for package in ("kubernetes", "kubernetes.config"):
        spec = importlib.util.find_spec(package)
        if spec is None:  # not installed: the first import of a part says so
            return
        sys.modules[package] = importlib.util.module_from_spec(spec)


def kube_client(kubeconfig: str | None, flag_env: str) -> Any:
    """An API client from `kubeconfig`, else from the Pod's service account; ConfigError with
    the fix when neither works (`flag_env` names where a kubeconfig can be given). The
    kubeconfig loader is imported only when a kubeconfig is given (see client_parts_only)."""
    # What needs no API server skips these imports.
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

    if kubeconfig:
        if not os.access(kubeconfig, os.R_OK):
            raise ConfigError(f"cannot read kubeconfig {kubeconfig}: "
                              f"{'no such file' if not os.path.exists(kubeconfig) else 'denied'}")
        from kubernetes.config import kube_config  # noqa: PLC0415

        try:
            return kube_config.new_client_from_config(config_file=kubeconfig)
        except OSError as exc:
            raise ConfigError(f"cannot read kubeconfig {kubeconfig}: {exc.strerror}") from None
        except (ConfigException, ValueError, TypeError) as exc:
            raise ConfigError(f"kubeconfig {kubeconfig} is not usable: {exc}") from None
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError(f"no kubeconfig, and not in a Pod (KUBERNETES_SERVICE_HOST is not "
                          f"set): give {flag_env}")
    from kubernetes.config.incluster_config import load_incluster_config  # noqa: PLC0415

    try:
        load_incluster_config()
    except ConfigException as exc:
        raise ConfigError(f"the Pod's service account is not usable: {exc}") from None
    return client.ApiClient()
