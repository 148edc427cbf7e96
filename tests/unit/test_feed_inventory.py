"""Placing a changed VM in its group from the feed's changes, asking vCenter once per folder."""

from __future__ import annotations

from controller.feed import Inventory, Key

FOLDERS: dict[str, Key | None] = {"f-vg": ("team-a", "vg-1"), "f-ns": None, "base": None}


def inventory() -> tuple[Inventory, list[str]]:
    asked: list[str] = []

    def place(folder: str) -> Key | None:
        asked.append(folder)
        return FOLDERS.get(folder)

    return Inventory(place), asked


def test_a_vm_in_a_group_folder_is_placed_in_its_group() -> None:
    inv, asked = inventory()
    assert inv.vm("vm-1", "enter", {"parent": "f-vg", "runtime.powerState": "poweredOn"}) == (
        "team-a", "vg-1")
    # A later change without the parent: the VM is placed where it was.
    assert inv.vm("vm-1", "modify", {"runtime.powerState": "poweredOff"}) == ("team-a", "vg-1")
    # Gone: its group is told, once.
    assert inv.vm("vm-1", "leave", {}) == ("team-a", "vg-1")
    assert inv.vm("vm-1", "modify", {}) is None
    assert asked == ["f-vg"]


def test_each_folder_is_asked_about_once() -> None:
    inv, asked = inventory()
    for i in range(5):
        inv.vm(f"vm-{i}", "enter", {"parent": "f-vg"})
        inv.vm(f"vm-{i}", "modify", {"parent": "f-vg", "config.hardware.numCPU": 2})
    inv.vm("vm-9", "enter", {"parent": "f-ns"})
    inv.vm("vm-10", "enter", {"parent": "f-ns"})
    assert asked == ["f-vg", "f-ns"]


def test_vms_outside_group_folders_belong_to_no_group_and_moves_are_followed() -> None:
    inv, _ = inventory()
    assert inv.vm("vm-2", "enter", {"parent": "f-ns"}) is None  # in a namespace folder
    assert inv.vm("vm-3", "enter", {"parent": "base"}) is None
    assert inv.vm("vm-3", "modify", {"parent": "f-vg"}) == ("team-a", "vg-1")  # moved in
    # Moved out: the group it left is told (it lost a VM), then it belongs to none.
    assert inv.vm("vm-3", "modify", {"parent": "elsewhere"}) == ("team-a", "vg-1")
    assert inv.vm("vm-3", "modify", {"runtime.powerState": "poweredOff"}) is None


def test_a_change_that_repeats_what_is_known_wakes_nobody() -> None:
    inv, _ = inventory()
    seen = {"parent": "f-vg", "runtime.powerState": "poweredOn", "config.hardware.numCPU": 1}
    assert inv.vm("vm-1", "enter", seen) == ("team-a", "vg-1")
    assert inv.vm("vm-1", "enter", seen) is None  # re-announced as it was
    assert inv.vm("vm-1", "modify", {"runtime.powerState": "poweredOn"}) is None
    assert inv.vm("vm-1", "modify", {"runtime.powerState": "poweredOff"}) == ("team-a", "vg-1")
    assert inv.vm("vm-1", "enter", {**seen, "runtime.powerState": "poweredOff"}) is None


def test_a_listing_after_a_reconnect_wakes_only_what_changed_or_went() -> None:
    inv, asked = inventory()
    for i in range(3):
        inv.vm(f"vm-{i}", "enter", {"parent": "f-vg", "runtime.powerState": "poweredOn"})
    relisted: list[str] = []
    inv.listing(relisted.append)  # a new session's lookup
    # vm-0 as it was, vm-1 powered off meanwhile, vm-2 gone, vm-3 new.
    assert inv.vm("vm-0", "enter", {"parent": "f-vg", "runtime.powerState": "poweredOn"}) is None
    assert inv.vm("vm-1", "enter", {"parent": "f-vg", "runtime.powerState": "poweredOff"}) == (
        "team-a", "vg-1")
    assert inv.vm("vm-3", "enter", {"parent": "f-vg"}) == ("team-a", "vg-1")
    assert inv.listed() == [("vm-2", ("team-a", "vg-1"))]
    assert asked == ["f-vg"]  # the folder is known: vCenter is not asked again
    assert relisted == []
    # The listing is over: a later change is just a change, and nothing else is missing.
    assert inv.vm("vm-2", "leave", {}) is None
    assert inv.listed() == []


def test_an_empty_listing_means_every_known_vm_went() -> None:
    inv, _ = inventory()
    inv.vm("vm-1", "enter", {"parent": "f-vg"})
    inv.vm("vm-9", "enter", {"parent": "f-ns"})  # in no group: nobody to tell
    inv.listing(lambda folder: None)
    assert inv.listed() == [("vm-1", ("team-a", "vg-1"))]


def test_a_vm_read_afresh_tells_only_what_changed() -> None:
    """Events name a VM; it is read whole: what is told is what differs from the last read."""
    inv, asked = inventory()
    whole = {"parent": "f-vg", "runtime.powerState": "poweredOff",
             "config.hardware.numCPU": 1, "guest.ipAddress": None}
    assert inv.read("vm-1", whole) == (("team-a", "vg-1"), "enter", whole)
    assert inv.read("vm-1", whole) is None  # a second event about the same change
    on = {**whole, "runtime.powerState": "poweredOn"}
    assert inv.read("vm-1", on) == (("team-a", "vg-1"), "modify",
                                    {"runtime.powerState": "poweredOn"})
    # A filter following the VM brings one property: only it is compared.
    assert inv.read("vm-1", {"guest.ipAddress": "10.0.0.5"}) == (
        ("team-a", "vg-1"), "modify", {"guest.ipAddress": "10.0.0.5"})
    assert inv.read("vm-1", {"guest.ipAddress": "10.0.0.5"}) is None
    assert inv.read("vm-9", {**whole, "parent": "f-ns"}) is None  # in no group
    assert asked == ["f-vg", "f-ns"]


def test_a_vm_awaits_an_address_while_it_is_on_in_a_group_without_one() -> None:
    inv, _ = inventory()
    inv.read("vm-1", {"parent": "f-vg", "runtime.powerState": "poweredOff",
                      "guest.ipAddress": None})
    assert not inv.awaits_address("vm-1")  # off: no guest to report one
    inv.read("vm-1", {"runtime.powerState": "poweredOn"})
    assert inv.awaits_address("vm-1")
    inv.read("vm-1", {"guest.ipAddress": "10.0.0.5"})
    assert not inv.awaits_address("vm-1")
    inv.read("vm-2", {"parent": "f-ns", "runtime.powerState": "poweredOn"})
    assert not inv.awaits_address("vm-2")  # not a group's: nobody shows its address
    assert not inv.awaits_address("vm-unknown")
