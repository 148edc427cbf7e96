"""The VmGroup rules, table-driven: defaulting, validation, and agreement with the CRD."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import vmgroup_api
from hack.stack import CRD_PATH
from hack.stack.reviews import patched, review, vmgroup
from vmgroup_api import HARD_BOUNDS, longest_vm_name, vm_name
from webhook import vmgroup as rules
from webhook.admission import MAX_WARNING_LENGTH, AdmissionRequest, parse_review
from webhook.vmgroup import Policy

POLICY = Policy(max_cpu=16, max_memory=64, max_replicas=50)
FULL: dict[str, Any] = {"cpu": 2, "memory": 4, "replicas": 3, "template": "vm-operator-template"}


def _request(body: dict[str, Any]) -> AdmissionRequest:
    return parse_review(json.dumps(body))


def _mutate(obj: dict[str, Any], policy: Policy = POLICY, **kw: Any) -> dict[str, Any]:
    return rules.mutate(_request(review(obj, **kw)), policy)["response"]


def _validate(obj: dict[str, Any] | None, policy: Policy = POLICY, **kw: Any) -> dict[str, Any]:
    return rules.validate(_request(review(obj, **kw)), policy)["response"]


# --- defaulting ------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ({"template": "t"}, {"cpu": 1, "memory": 1, "replicas": 1, "template": "t"}),
    ({"template": "t", "cpu": 4}, {"cpu": 4, "memory": 1, "replicas": 1, "template": "t"}),
    ({"template": "t", "replicas": 0}, {"cpu": 1, "memory": 1, "replicas": 0, "template": "t"}),
    (FULL, FULL),
])
def test_defaults_fill_only_what_is_missing(spec: dict[str, Any],
                                            expected: dict[str, Any]) -> None:
    obj = vmgroup(**spec)
    assert patched(obj, _mutate(obj))["spec"] == expected


def test_missing_spec_is_created() -> None:
    obj = vmgroup()
    del obj["spec"]
    response = _mutate(obj)
    assert patched(obj, response)["spec"] == {"cpu": 1, "memory": 1, "replicas": 1}


def test_template_defaults_from_policy_with_a_warning() -> None:
    obj = vmgroup()
    response = _mutate(obj, Policy(default_template="golden"))
    assert patched(obj, response)["spec"]["template"] == "golden"
    assert response["warnings"] == ["spec.template not set: using 'golden'"]


def test_update_keeps_old_values_for_fields_left_out() -> None:
    """A PUT without some fields keeps them, even if the cluster default changed since."""
    old = vmgroup(cpu=4, memory=8, replicas=3, template="first")
    new = vmgroup(replicas=5)
    response = _mutate(new, Policy(default_template="second"), operation="UPDATE", old=old)
    assert patched(new, response)["spec"] == {"cpu": 4, "memory": 8, "replicas": 5,
                                              "template": "first"}
    assert "warnings" not in response


def test_every_warning_fits_the_recommended_length() -> None:
    longest = "t" * 80
    response = _mutate(vmgroup(), Policy(default_template=longest))
    assert all(len(w) <= MAX_WARNING_LENGTH for w in response["warnings"])
    assert all(len(w) <= MAX_WARNING_LENGTH for w in _validate(
        vmgroup(**{**FULL, "replicas": 0}))["warnings"])


def test_defaulting_twice_yields_no_patch() -> None:
    obj = vmgroup(template="t")
    once = patched(obj, _mutate(obj))
    assert "patch" not in _mutate(once)


def test_non_object_spec_is_left_for_validation() -> None:
    obj = vmgroup()
    obj["spec"] = "three VMs please"
    assert "patch" not in _mutate(obj)
    assert _validate(obj)["status"]["message"] == \
        "spec: Required value: a VmGroup needs a spec object"


def _without_uid(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "uid"}


def test_delete_is_not_mutated() -> None:
    assert _without_uid(_mutate(vmgroup(), operation="DELETE")) == {"allowed": True}


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    ({"cpu": 0}, "spec.cpu: Invalid value: 0: must be from 1 to 16 (this cluster's policy)"),
    ({"cpu": 17}, "spec.cpu: Invalid value: 17: must be from 1 to 16 (this cluster's policy)"),
    ({"cpu": "2"}, 'spec.cpu: Invalid value: "2": must be an integer'),
    ({"cpu": True}, "spec.cpu: Invalid value: true: must be an integer"),
    ({"cpu": 2.5}, "spec.cpu: Invalid value: 2.5: must be an integer"),
    ({"cpu": None}, "spec.cpu: Required value: must be an integer from 1 to 16"),
    ({"memory": 65}, "spec.memory: Invalid value: 65: must be from 1 to 64"),
    ({"replicas": -1}, "spec.replicas: Invalid value: -1: must be from 0 to 50"),
    ({"replicas": 51}, "spec.replicas: Invalid value: 51: must be from 0 to 50"),
    ({"template": None}, "spec.template: Required value: name of the vSphere template to clone"),
    ({"template": ""}, 'spec.template: Invalid value: "": must be 1 to 80 characters long'),
    ({"template": "t" * 81}, "must be 1 to 80 characters long"),
    ({"template": "a/b"}, "spec.template: Invalid value: \"a/b\": must not contain '/'"),
    ({"template": "a\nb"}, "must not contain '\\n'"),
    ({"template": 7}, "spec.template: Invalid value: 7: must be a string"),
])
def test_each_invalid_field_is_named_with_its_range(change: dict[str, Any], message: str) -> None:
    response = _validate(vmgroup(**{**FULL, **change}))
    assert response["allowed"] is False
    assert message in response["status"]["message"]
    assert response["status"]["code"] == 422


def test_all_errors_are_reported_at_once() -> None:
    message = _validate(vmgroup(cpu=0, memory=0, replicas=-1, template=""))["status"]["message"]
    assert [part.split(":")[0] for part in message.split("; ")] == [
        "spec.cpu", "spec.memory", "spec.replicas", "spec.template"]


def test_a_valid_group_is_allowed_without_patch_or_warning() -> None:
    assert _without_uid(_validate(vmgroup(**FULL))) == {"allowed": True}


def test_zero_replicas_is_allowed_with_a_warning() -> None:
    response = _validate(vmgroup(**{**FULL, "replicas": 0}))
    assert response["allowed"] is True
    assert response["warnings"] == ["spec.replicas is 0: the group will have no VMs"]


def test_policy_at_the_hard_bound_says_so() -> None:
    policy = Policy(max_cpu=768)
    message = _validate(vmgroup(**{**FULL, "cpu": 769}), policy)["status"]["message"]
    assert "must be from 1 to 768 (vSphere's limit)" in message


def test_vm_names_must_fit_vsphere() -> None:
    fits = _validate(vmgroup(name="g" * 71, namespace="team-a", **{**FULL, "replicas": 10}))
    assert fits["allowed"] is True  # team-a-ggg…g-9 is exactly 80 characters
    too_long = _validate(vmgroup(name="g" * 71, namespace="team-a", **{**FULL, "replicas": 11}))
    assert too_long["status"]["message"] == (
        f'metadata.name: Invalid value: "{"g" * 71}": VM names would be up to 81 characters '
        f"('team-a-{'g' * 71}-10'); vSphere allows 80: shorten the group or namespace name")


def test_template_is_immutable_on_update() -> None:
    old = vmgroup(**FULL)
    new = vmgroup(**{**FULL, "template": "other"})
    message = _validate(new, operation="UPDATE", old=old)["status"]["message"]
    assert message.startswith('spec.template: Invalid value: "other": field is immutable '
                              '(was "vm-operator-template")')
    assert _validate(vmgroup(**{**FULL, "cpu": 4}), operation="UPDATE", old=old)["allowed"]


def test_lowered_policy_does_not_block_edits_of_existing_groups() -> None:
    old = vmgroup(**{**FULL, "cpu": 16})
    edited = vmgroup(**{**FULL, "cpu": 16})
    edited["metadata"]["finalizers"] = ["vm.codeconnect.vmworld.com/vms"]
    stricter = Policy(max_cpu=8, max_memory=64, max_replicas=50)
    assert _validate(edited, stricter, operation="UPDATE", old=old)["allowed"] is True
    grown = vmgroup(**{**FULL, "cpu": 12})
    assert _validate(grown, stricter, operation="UPDATE", old=old)["allowed"] is False


def test_updates_of_a_group_being_deleted_are_always_allowed() -> None:
    dying = vmgroup(**{**FULL, "template": "changed", "cpu": 10_000})
    dying["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    assert _validate(dying, operation="UPDATE", old=vmgroup(**FULL))["allowed"] is True


def test_delete_is_allowed_without_looking() -> None:
    assert _validate(None, operation="DELETE", old=vmgroup(**FULL))["allowed"] is True


def test_scale_subresource_is_held_to_the_same_replicas_rule() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
             "metadata": {"name": "vg-1", "namespace": "default"}, "spec": {"replicas": 51}}
    kind = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    response = _validate(scale, operation="UPDATE", kind=kind, sub_resource="scale")
    assert response["status"]["message"] == \
        "spec.replicas: Invalid value: 51: must be from 0 to 50 (this cluster's policy)"
    scale["spec"]["replicas"] = 5
    assert _validate(scale, operation="UPDATE", kind=kind, sub_resource="scale")["allowed"]
    # `kubectl scale --replicas=0` sends no replicas at all (omitempty).
    scale["spec"] = {}
    zero = _validate(scale, operation="UPDATE", kind=kind, sub_resource="scale")
    assert zero["allowed"] is True
    assert zero["warnings"] == ["spec.replicas is 0: the group will have no VMs"]


def test_wrong_kind_is_refused_with_what_we_admit() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    response = _validate(pod, kind={"group": "", "version": "v1", "kind": "Pod"})
    assert response["status"]["code"] == 400
    assert response["status"]["message"] == (
        "this webhook admits vm.codeconnect.vmworld.com/v1alpha1 VmGroup or autoscaling/v1 "
        "Scale, not v1 Pod")


# --- one place per rule ----------------------------------------------------------------------

def test_hard_bounds_match_the_crd_schema() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for field, (low, high) in HARD_BOUNDS.items():
        assert (spec["properties"][field]["minimum"],
                spec["properties"][field]["maximum"]) == (low, high), field
    assert spec["properties"]["template"]["maxLength"] == vmgroup_api.MAX_VSPHERE_NAME


def test_the_crd_names_what_the_api_package_says() -> None:
    """The CRD file and vmgroup_api state the same API: names, version, status shape."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    names = crd["spec"]["names"]
    (version,) = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == vmgroup_api.CRD_NAME
    assert crd["spec"]["group"] == vmgroup_api.GROUP
    assert version["name"] == vmgroup_api.VERSION
    assert (names["kind"], names["plural"]) == (vmgroup_api.KIND, vmgroup_api.PLURAL)
    assert vmgroup_api.SHORT_NAME in names["shortNames"]
    assert set(spec_fields := version["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]) == {*vmgroup_api.DEFAULTS, "template"}, spec_fields
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert tuple(status["phase"]["enum"]) == vmgroup_api.PHASES
    assert status["lastMessage"]["maxLength"] == vmgroup_api.MAX_MESSAGE
    vms = status["vms"]
    assert vms["maxItems"] == vmgroup_api.MAX_STATUS_VMS
    assert vms["items"]["properties"]["ipAddresses"]["maxItems"] == vmgroup_api.MAX_VM_ADDRESSES
    assert vms["items"]["properties"]["name"]["maxLength"] == vmgroup_api.MAX_VSPHERE_NAME


@pytest.mark.parametrize("kwargs", [{"max_cpu": 0}, {"max_memory": 24577},
                                    {"max_replicas": -1}, {"default_template": "a/b"}])
def test_policy_outside_the_hard_bounds_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must (be|not contain)"):
        Policy(**kwargs)


def test_vm_names_are_deterministic() -> None:
    assert vm_name("ns", "vg-1", 0) == "ns-vg-1-0"
    assert longest_vm_name("ns", "vg-1", 12) == "ns-vg-1-11"
    assert longest_vm_name("ns", "vg-1", 0) == "ns-vg-1-0"
