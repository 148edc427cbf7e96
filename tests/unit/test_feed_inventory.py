"""Placing a changed VM in its group from the feed's own changes, without asking vCenter."""

from __future__ import annotations

from controller.feed import Inventory


def inventory() -> Inventory:
    inv = Inventory("base")
    inv.folder("f-ns", "enter", {"name": "team-a", "parent": "base"})
    inv.folder("f-vg", "enter", {"name": "vg-1", "parent": "f-ns"})
    return inv


def test_a_vm_in_a_group_folder_is_placed_in_its_group() -> None:
    inv = inventory()
    assert inv.vm("vm-1", "enter", {"parent": "f-vg", "runtime.powerState": "poweredOn"}) == (
        "team-a", "vg-1")
    # A later change without the parent: the VM is placed where it was.
    assert inv.vm("vm-1", "modify", {"runtime.powerState": "poweredOff"}) == ("team-a", "vg-1")
    # Gone: its group is told, once.
    assert inv.vm("vm-1", "leave", {}) == ("team-a", "vg-1")
    assert inv.vm("vm-1", "modify", {}) is None


def test_vms_outside_group_folders_belong_to_no_group() -> None:
    inv = inventory()
    assert inv.vm("vm-2", "enter", {"parent": "f-ns"}) is None  # in a namespace folder
    assert inv.vm("vm-3", "enter", {"parent": "base"}) is None  # in the base folder
    assert inv.vm("vm-4", "enter", {"parent": "elsewhere"}) is None
    inv.folder("f-deep", "enter", {"name": "x", "parent": "f-vg"})
    assert inv.vm("vm-5", "enter", {"parent": "f-deep"}) is None  # one level too deep


def test_folder_renames_and_moves_are_followed() -> None:
    inv = inventory()
    inv.folder("f-vg", "modify", {"name": "vg-2"})
    assert inv.vm("vm-1", "enter", {"parent": "f-vg"}) == ("team-a", "vg-2")
    inv.folder("f-vg", "modify", {"parent": "base"})  # moved up: no longer a group folder
    assert inv.vm("vm-6", "enter", {"parent": "f-vg"}) is None
    inv.folder("f-ns", "leave", {})
    inv.folder("f-vg", "modify", {"parent": "f-ns"})
    assert inv.vm("vm-7", "enter", {"parent": "f-vg"}) is None  # its namespace folder is gone
