"""VMware's vCenter simulator, reached through pyvmomi exactly as the controller will reach it."""

from __future__ import annotations

import ssl
from dataclasses import replace
from typing import Any

import pytest
from pyVim.connect import SmartConnect
from pyVmomi import vim

from hack.stack import VCenterInfo, poll, vsphere

pytestmark = pytest.mark.vcenter


def test_template_is_seeded_in_known_place(vsphere_si: Any, vcenter: VCenterInfo) -> None:
    template = vsphere.find_by_name(vsphere_si, vim.VirtualMachine, vcenter.template)
    assert template is not None
    assert template.config.template is True
    assert template.parent.name == vcenter.template_folder
    assert template.parent.parent == vsphere.datacenter(vsphere_si, vcenter).vmFolder


def test_tls_is_verified(vcenter: VCenterInfo) -> None:
    """The simulator serves a certificate from the stack's CA; the system CAs do not trust it."""
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        SmartConnect(host=vcenter.host, port=vcenter.port, user=vcenter.username,
                     pwd=vcenter.password, sslContext=ssl.create_default_context())


def test_wrong_password_is_refused(vcenter: VCenterInfo) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        vsphere.connect(replace(vcenter, password="not-the-password"))


def test_clone_template_with_two_vcpus_then_destroy(vsphere_si: Any,
                                                   vcenter: VCenterInfo) -> None:
    template = vsphere.find_by_name(vsphere_si, vim.VirtualMachine, vcenter.template)
    dc = vsphere.datacenter(vsphere_si, vcenter)
    cluster = next(c for c in dc.hostFolder.childEntity
                   if isinstance(c, vim.ClusterComputeResource))
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(pool=cluster.resourcePool),
        config=vim.vm.ConfigSpec(numCPUs=2, memoryMB=1024),
        powerOn=True,
        template=False,
    )
    clone = vsphere.wait_for_task(
        template.CloneVM_Task(folder=dc.vmFolder, name="smoke-clone", spec=spec))

    seen = vsphere.find_by_name(vsphere_si, vim.VirtualMachine, "smoke-clone")
    assert seen == clone
    assert seen.config.hardware.numCPU == 2
    assert seen.config.hardware.memoryMB == 1024
    assert seen.runtime.powerState == "poweredOn"
    assert template.config.hardware.numCPU == 1  # the template itself is untouched

    vsphere.wait_for_task(clone.PowerOffVM_Task())
    vsphere.wait_for_task(clone.Destroy_Task())
    poll(lambda: vsphere.find_by_name(vsphere_si, vim.VirtualMachine, "smoke-clone") is None,
         timeout=10, what="the clone to disappear")
