"""A local stack of an e2e module's own, made ready for VmGroups: the CRD installed, the
module's namespace made, then the webhook and the controller if the module runs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hack.stack import LocalStack
from hack.stack.components import install_crd, kubectl


@contextlib.contextmanager
def vmgroup_stack(directory: Path, namespace: str, *, webhook: bool = False,
                  controller_args: list[str] | None = None,
                  **stack_options: Any) -> Iterator[LocalStack]:
    """`stack_options` go to LocalStack (vcsim's delays); `controller_args` None: no
    controller (the module starts its own)."""
    with LocalStack(directory, **stack_options) as local:
        install_crd(local.kubeconfig)
        kubectl(local.kubeconfig, "create", "namespace", namespace)
        if webhook:
            local.start_webhook()
        if controller_args is not None:
            local.start_controller(controller_args)
        yield local
