"""The reconcile decision: what a VmGroup wants and what vCenter has, in; actions and status, out.

Pure and level-triggered: it is given the whole observed state every time and says what to do
next, so a restart, a missed event or a crash between two actions leads to the same plan. The
VM actions of one plan each touch another VM, so the reconciler runs them at once; the folder
and finalizer steps come after them, in order.

Rules (DESIGN.md, "Principles"):
- the finalizer comes before any VM; without it the only action is to add it;
- only VMs carrying the group's UID as ownership marker are ever touched, and a name taken by
  another VM is never cloned over (the group reports it instead);
- VM names are deterministic (vmgroup_api.naming), so a missing ordinal is cloned under the
  name it would have had, and a restart never duplicates a VM;
- surplus VMs go highest ordinal first; drift (powered off, destroyed) is repaired;
- cpu/memory changes roll one VM at a time, and only while every other VM is available;
- deletion destroys every owned VM, then the folder, then releases the finalizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmgroup_api import DELETING, ERROR, PENDING, RUNNING, ordinal, vm_name

SUCCESS_MESSAGE = "successfully reconciled VmGroup"


@dataclass(frozen=True)
class Group:
    """The parts of a VmGroup the decision needs."""

    namespace: str
    name: str
    uid: str
    cpu: int
    memory_gb: int
    replicas: int
    template: str
    deleting: bool = False
    has_finalizer: bool = True

    @property
    def memory_mb(self) -> int:
        return self.memory_gb * 1024


@dataclass(frozen=True)
class Vm:
    """One VM as vCenter reports it."""

    name: str
    owner_uid: str | None  # the ownership marker; None when the VM has none
    powered_on: bool
    cpu: int
    memory_mb: int
    # For status.vms only; the decisions never look at them.
    power_state: str = ""  # vCenter's: poweredOn, poweredOff or suspended
    addresses: tuple[str, ...] = ()  # as the guest reports them (VMware Tools), primary first
    host: str = ""
    instance_uuid: str = ""
    moid: str = ""  # vCenter's id of the VM, as the change feed names it


# --- actions, in the order the adapter must run them ----------------------------------------

@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class Clone:
    name: str
    cpu: int
    memory_mb: int
    template: str


@dataclass(frozen=True)
class PowerOn:
    name: str


@dataclass(frozen=True)
class Reconfigure:
    """Power off (hot-add may be off), set cpu and memory, power on."""

    name: str
    cpu: int
    memory_mb: int


@dataclass(frozen=True)
class Destroy:
    """Power off if on, then destroy."""

    name: str


@dataclass(frozen=True)
class DeleteFolder:
    pass


@dataclass(frozen=True)
class RemoveFinalizer:
    pass


Action = AddFinalizer | Clone | PowerOn | Reconfigure | Destroy | DeleteFolder | RemoveFinalizer


@dataclass(frozen=True)
class Status:
    phase: str  # PENDING, RUNNING, DELETING, or ERROR (a name taken; or an action failed)
    current_replicas: int
    desired_replicas: int
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: Status

    @property
    def converged(self) -> bool:
        return not self.actions


def _counted(what: str, n: int) -> str:
    return f"{what} {n} VM" + ("" if n == 1 else "s")


def plan(group: Group, observed: Sequence[Vm]) -> Plan:
    """The next actions for `group`, given every VM vCenter has in its folder."""
    owned = {vm.name: vm for vm in observed if vm.owner_uid == group.uid}
    running = sum(vm.powered_on for vm in owned.values())

    if group.deleting:
        if owned:
            doomed = sorted(owned, reverse=True)
            return Plan(tuple(Destroy(n) for n in doomed), Status(
                DELETING, running, 0, f"deleting: {_counted('destroying', len(doomed))}"))
        tail: tuple[Action, ...] = (DeleteFolder(), RemoveFinalizer()) if group.has_finalizer \
            else ()
        return Plan(tail, Status(DELETING, 0, 0, "deleting: all VMs destroyed"))

    if not group.has_finalizer:  # nothing is created before deletion is guaranteed to clean up
        return Plan((AddFinalizer(),), Status(PENDING, running, group.replicas,
                                              "adding the finalizer"))

    wanted = [vm_name(group.namespace, group.name, i) for i in range(group.replicas)]
    wanted_set = set(wanted)
    def rank(name: str) -> int:  # a VM of ours under a foreign name goes last
        number = ordinal(group.namespace, group.name, name)
        return -1 if number is None else number

    surplus = sorted((n for n in owned if n not in wanted_set), key=rank, reverse=True)
    # A VM of someone else under one of our names: never touched, never cloned over.
    taken = [n for n in wanted if n not in owned and n in {vm.name for vm in observed}]
    missing = [n for n in wanted if n not in owned and n not in taken]
    stopped = [n for n in wanted if n in owned and not owned[n].powered_on]
    resize = [n for n in wanted if n in owned and (owned[n].cpu, owned[n].memory_mb)
              != (group.cpu, group.memory_mb)]
    power_on = [n for n in stopped if n not in resize]

    actions: list[Action] = [Destroy(n) for n in surplus]
    actions += [Clone(n, group.cpu, group.memory_mb, group.template) for n in missing]
    actions += [PowerOn(n) for n in power_on]
    if resize and not missing and not power_on:
        # Rolling: at most one VM unavailable at a time. VMs to resize that are down already
        # go first (reconfiguring them takes nothing more away); else the lowest ordinal.
        targets = [n for n in resize if n in stopped] or resize[:1]
        actions += [Reconfigure(n, group.cpu, group.memory_mb) for n in targets]

    current = sum(owned[n].powered_on for n in wanted if n in owned)
    blocked = (f"VM name{'s' if len(taken) > 1 else ''} {', '.join(taken)} taken by "
               f"{'VMs' if len(taken) > 1 else 'a VM'} not of this group: rename or remove "
               f"{'them' if len(taken) > 1 else 'it'}") if taken else ""
    if not actions:
        if blocked:  # the feed brings us back when the squatter goes
            return Plan((), Status(ERROR, current, group.replicas, blocked))
        return Plan((), Status(RUNNING, current, group.replicas, SUCCESS_MESSAGE))
    counts = {"creating": len(missing), "removing": len(surplus),
              "powering on": len(power_on), "resizing": len(resize)}
    message = ", ".join(_counted(text, n) for text, n in counts.items() if n)
    return Plan(tuple(actions), Status(PENDING, current, group.replicas,
                                       "; ".join(m for m in (message, blocked) if m)))
