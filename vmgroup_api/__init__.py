"""The VmGroup API (vm.codeconnect.vmworld.com/v1alpha1): what the webhook and the controller
must agree on, stated once. Pure data and pure functions; imports nothing of the project.

The CRD (charts/vmgroup-operator/crds/) stays the one YAML file the API server reads;
tests/unit/test_vmgroup_rules.py keeps it and this module equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .naming import MAX_VSPHERE_NAME, longest_vm_name, ordinal, vm_name

GROUP: Final = "vm.codeconnect.vmworld.com"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "VmGroup"
PLURAL: Final = "vmgroups"
SHORT_NAME: Final = "vg"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# --- spec ------------------------------------------------------------------------------------
# The integer fields, their defaults, and what vSphere 8 itself allows: vCPUs and memory (GB)
# per VM, VMs registered in one vCenter. Cluster policy (the webhook's flags) lies within these.
DEFAULTS: Mapping[str, int] = {"cpu": 1, "memory": 1, "replicas": 1}
HARD_BOUNDS: Mapping[str, tuple[int, int]] = {
    "cpu": (1, 768), "memory": (1, 24576), "replicas": (0, 45000)}
TEMPLATE_FORBIDDEN = frozenset("/\\%")  # vSphere escapes these in inventory paths


def template_problem(template: str) -> str | None:
    """Why `template` cannot name a vSphere template, or None when it can."""
    if not 1 <= len(template) <= MAX_VSPHERE_NAME:
        return f"must be 1 to {MAX_VSPHERE_NAME} characters long"
    if bad := sorted({c for c in template if c in TEMPLATE_FORBIDDEN or not c.isprintable()}):
        return f"must not contain {', '.join(repr(c) for c in bad)}"
    return None


def selector(name: str) -> str:
    """The group's label selector, as its scale subresource reports it (status.selector): what
    an autoscaler asks for, even when it scales on external or object metrics."""
    return f"{GROUP}/vmgroup={name}"


# --- ownership -------------------------------------------------------------------------------
FINALIZER: Final = f"{GROUP}/vms"  # held while a group may still own VMs in vCenter
OWNER_KEY: Final = "vmgroup.codeconnect.vmworld.com.uid"  # VM extraConfig key: the group's UID

# --- status ----------------------------------------------------------------------------------
PENDING, RUNNING, ERROR, DELETING = "PENDING", "RUNNING", "ERROR", "DELETING"
PHASES: Final = (PENDING, RUNNING, ERROR, DELETING)
READY, PROGRESSING = "Ready", "Progressing"  # metav1.Condition types
MAX_MESSAGE: Final = 1024  # the CRD's bound on status.lastMessage (a longer one is refused, 422)
# status.vms lists a group's VMs, lowest ordinal first, with at most this many entries: a group
# may hold 45,000 VMs, and a status must stay far below what etcd accepts in one write
# (1.5 MB); 100 entries of at most ~700 bytes is 70 kB. The rest are counted in
# status.vmsOmitted. Each VM lists at most MAX_VM_ADDRESSES guest addresses, primary first.
MAX_STATUS_VMS: Final = 100
MAX_VM_ADDRESSES: Final = 4

__all__ = [
    "API_VERSION", "CRD_NAME", "DEFAULTS", "DELETING", "ERROR", "FINALIZER", "GROUP",
    "HARD_BOUNDS", "KIND", "MAX_MESSAGE", "MAX_STATUS_VMS", "MAX_VM_ADDRESSES",
    "MAX_VSPHERE_NAME", "OWNER_KEY", "PENDING", "PHASES", "PLURAL", "PROGRESSING", "READY",
    "RUNNING", "SHORT_NAME", "TEMPLATE_FORBIDDEN", "VERSION",
    "longest_vm_name", "ordinal", "selector", "template_problem", "vm_name",
]
