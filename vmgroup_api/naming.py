"""Names the controller gives VMs in vCenter: the one place this rule lives.

VM names are deterministic (`<namespace>-<group>-<ordinal>`), so a controller restarted at any
instant finds the VMs it already made instead of making more; the admission webhook uses the
same function to refuse groups whose names would not fit vSphere's limit.
"""

from __future__ import annotations

MAX_VSPHERE_NAME = 80  # vSphere inventory names are at most 80 characters


def vm_name(namespace: str, group: str, ordinal: int) -> str:
    return f"{namespace}-{group}-{ordinal}"


def longest_vm_name(namespace: str, group: str, replicas: int) -> str:
    """The longest name a group of `replicas` VMs will use (its highest ordinal)."""
    return vm_name(namespace, group, max(replicas - 1, 0))


def ordinal(namespace: str, group: str, name: str) -> int | None:
    """The ordinal of `name` if it is one of the group's VM names, else None."""
    prefix = vm_name(namespace, group, 0)[:-1]
    number = name.removeprefix(prefix) if name.startswith(prefix) else ""
    return int(number) if number.isdigit() and str(int(number)) == number else None
