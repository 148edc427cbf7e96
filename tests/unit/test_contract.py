"""The files that are a contract with users: the CRD's columns and the example manifest."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from hack.stack import CRD_PATH, REPO

CONTRACT_COLUMNS = ["PHASE", "CURRENT", "DESIRED", "CPU", "MEMORY", "TEMPLATE", "LAST_MESSAGE"]


def _version() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version)


def test_printer_columns_read_exactly_as_the_contract() -> None:
    columns = _version()["additionalPrinterColumns"]
    assert [c["name"] for c in columns if c.get("priority", 0) == 0] == CONTRACT_COLUMNS
    wide_only = [c["name"] for c in columns if c.get("priority", 0) > 0]
    assert wide_only == ["READY", "IP", "AGE"]  # -o wide may add, never change


def test_scale_subresource_points_at_replicas() -> None:
    scale = _version()["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas",
                     "statusReplicasPath": ".status.currentReplicas",
                     "labelSelectorPath": ".status.selector"}  # for autoscalers


def test_example_is_the_design_manifest() -> None:
    example = yaml.safe_load((REPO / "examples" / "vmgroup.yaml").read_text())
    assert example == {
        "apiVersion": "vm.codeconnect.vmworld.com/v1alpha1",
        "kind": "VmGroup",
        "metadata": {"name": "vg-1"},
        "spec": {"cpu": 1, "memory": 1, "replicas": 3, "template": "vm-operator-template"},
    }


def test_the_crd_exists_once() -> None:
    """The chart and the local stack share one CRD file: no second copy may drift from it."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yaml", "*.yml"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    copies = [REPO / p for p in listed
              if "kind: CustomResourceDefinition" in (REPO / p).read_text(errors="ignore")
              and "vmgroups.vm.codeconnect.vmworld.com" in (REPO / p).read_text(errors="ignore")]
    assert copies == [CRD_PATH]
