"""The operator as users run it: its image on a real node, installed with its own chart.

One stack for the module: etcd, kube-apiserver, kube-controller-manager, a node (containerd,
kubelet, kube-scheduler, kube-proxy) and vcsim with a clone delay (so a scale-up takes seconds),
and `helm install` of charts/vmgroup-operator with `make image`'s image. Everything here goes
through real Pods: the API server calls the webhook through its Service, the controller reaches
vcsim and the API server from its Pod, leader election runs between two Pods.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pyVmomi import vim

from hack.stack import LocalStack, poll, vsphere
from hack.stack.node import PAUSE_IMAGE
from hack.stack.operator import Operator, build_image
from hack.stack.workloads import configmap, deployment
from vmgroup_api import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.kube, pytest.mark.vcenter, pytest.mark.node]

NAMESPACE = "vmgroup-system"
CLONE_MS = 1500  # a scale-up of a few VMs takes seconds: long enough to act in the middle of it


@dataclass
class Cluster:
    stack: LocalStack
    operator: Operator
    api: client.ApiClient
    image_ref: str

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return self.operator.kubectl(*args, check=check, stdin=stdin).stdout

    def pods(self, component: str) -> list[dict[str, Any]]:
        listing = json.loads(self.kubectl("-n", NAMESPACE, "get", "pods", "-l",
                                          f"app.kubernetes.io/component={component}",
                                          "-o", "json"))
        return list(listing["items"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    archive, ref = build_image()
    work = tmp_path_factory.mktemp("node")
    with LocalStack(work, node=True, images=[archive],
                    vcsim_method_delays={"CloneVM_Task": CLONE_MS}) as stack:
        operator = Operator(stack.kubeconfig, work / "home", NAMESPACE)
        operator.install(stack.vcenter, ref)
        api = config.new_client_from_config(config_file=str(stack.kubeconfig))
        yield Cluster(stack, operator, api, ref)
        api.close()
        assert stack.node is not None
        node = stack.node
    assert node.leftovers() == {}


@pytest.fixture
def user_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    poll(lambda: cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False),
         timeout=30, what=f"ServiceAccount default in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _row(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return cluster.kubectl("-n", namespace, "get", "vg", name, "--no-headers",
                           check=False).strip().split(None, 7)


def _owned_vms(cluster: Cluster, namespace: str, name: str) -> list[str]:
    si = vsphere.connect(cluster.stack.vcenter)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine],
                                                       True)
        prefix = f"{namespace}-{name}-"
        names = [vm.name for vm in view.view if vm.name.startswith(prefix)]
        view.Destroy()
        return sorted(names)
    finally:
        vsphere.disconnect(si)


def _wait_row(cluster: Cluster, namespace: str, name: str, phase: str, count: int,
              timeout: float = 120) -> None:
    poll(lambda: _row(cluster, namespace, name)[1:4] == [phase, str(count), str(count)],
         timeout=timeout, what=f"{namespace}/{name} to be {phase} {count} {count}")


# --- installed, and locked down --------------------------------------------------------------

def test_both_deployments_are_ready(cluster: Cluster) -> None:
    for component in ("webhook", "controller"):
        pods = cluster.pods(component)
        assert len(pods) == 2
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            assert all(s["ready"] for s in pod["status"]["containerStatuses"])
            image = pod["spec"]["containers"][0]["image"]
            assert image == cluster.image_ref


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_the_running_pods_are_locked_down(cluster: Cluster, component: str) -> None:
    pod = cluster.pods(component)[0]["metadata"]["name"]

    def run(*command: str) -> str:
        return cluster.kubectl("-n", NAMESPACE, "exec", pod, "--", *command)

    assert run("id", "-u").strip() == "65532"
    assert run("id", "-g").strip() == "65532"
    status = run("cat", "/proc/1/status")
    for capability in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        (value,) = re.findall(rf"^{capability}:\s+(\w+)$", status, re.MULTILINE)
        assert int(value, 16) == 0, capability
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
    write = cluster.operator.kubectl("-n", NAMESPACE, "exec", pod, "--", "python", "-c",
                                     "open('/opt/venv/x', 'w')", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


# --- admission through the Service, reconciling from the Pod ---------------------------------

def test_admission_through_the_service(cluster: Cluster, user_namespace: str) -> None:
    group = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VmGroup",
             "metadata": {"name": "probe", "namespace": user_namespace},
             "spec": {"template": "vm-operator-template"}}
    defaulted = json.loads(cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                           stdin=json.dumps(group)))
    assert defaulted["spec"] == {"cpu": 1, "memory": 1, "replicas": 1,
                                 "template": "vm-operator-template"}
    group["spec"]["cpu"] = 40
    refused = cluster.operator.kubectl("create", "-f", "-", stdin=json.dumps(group), check=False)
    assert refused.returncode != 0
    assert ('admission webhook "validate.vmgroups.vm.codeconnect.vmworld.com" denied the '
            "request: spec.cpu: Invalid value: 40: must be from 1 to 32") in refused.stderr


def test_the_example_converges_scales_and_goes(cluster: Cluster, user_namespace: str) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "vmgroup.yaml"
    cluster.kubectl("-n", user_namespace, "apply", "-f", str(example))
    _wait_row(cluster, user_namespace, "vg-1", "RUNNING", 3)
    assert _row(cluster, user_namespace, "vg-1") == [
        "vg-1", "RUNNING", "3", "3", "1", "1", "vm-operator-template",
        "successfully reconciled VmGroup"]
    assert len(_owned_vms(cluster, user_namespace, "vg-1")) == 3

    cluster.kubectl("-n", user_namespace, "scale", "vg", "vg-1", "--replicas=5")
    _wait_row(cluster, user_namespace, "vg-1", "RUNNING", 5)
    assert len(_owned_vms(cluster, user_namespace, "vg-1")) == 5

    cluster.kubectl("-n", user_namespace, "delete", "vg", "vg-1", "--timeout=120s")
    assert _owned_vms(cluster, user_namespace, "vg-1") == []


# --- the initializer example, with its sidecar really running --------------------------------

def test_an_injected_sidecar_runs(cluster: Cluster, user_namespace: str) -> None:
    # The README's logging-agent example, with the node's local image for its containers.
    agent = {
        "containers": [{"name": "logging-agent", "image": PAUSE_IMAGE,
                        "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"}]}],
        "initContainers": [{"name": "log-setup", "image": PAUSE_IMAGE, "args": ["exit"]}],
        "volumes": [{"name": "varlog", "emptyDir": {}}],
        "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"}],
        "env": [{"name": "LOG_DIR", "value": "/var/log"}],
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("logging-agent-initializer", agent, namespace=NAMESPACE)))
    app = deployment("web", annotations={"initializer.kubernetes.io/logging-agent": "true"})
    app["metadata"]["namespace"] = user_namespace
    app["spec"]["template"]["spec"]["containers"][0].update(image=PAUSE_IMAGE)

    def injected() -> bool:  # the ConfigMap reaches every webhook worker within seconds
        out = json.loads(cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                         stdin=json.dumps(app)))
        names = [c["name"] for c in out["spec"]["template"]["spec"]["containers"]]
        return names == ["app", "logging-agent"]

    poll(injected, timeout=30, what="the webhook to know the initializer")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(app))
    cluster.kubectl("-n", user_namespace, "rollout", "status", "deployment/web", "--timeout=90s")
    (pod,) = json.loads(cluster.kubectl("-n", user_namespace, "get", "pods", "-l", "app=web",
                                        "-o", "json"))["items"]
    running = {s["name"]: "running" in s["state"] for s in pod["status"]["containerStatuses"]}
    assert running == {"app": True, "logging-agent": True}
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "log-setup"
    assert init["state"]["terminated"]["exitCode"] == 0
    assert "pause: waiting for SIGTERM" in cluster.kubectl(
        "-n", user_namespace, "logs", pod["metadata"]["name"], "-c", "logging-agent")


# --- leader failover ---------------------------------------------------------------------------

def _clones(metrics: str) -> float:
    with urllib.request.urlopen(metrics, timeout=5) as response:  # noqa: S310 - http: a Pod
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vmgroup_controller_vcenter_calls_total{")
               and 'method="CloneVM_Task"' in line)


def test_the_standby_takes_over_mid_scale_up_without_duplicates(
        cluster: Cluster, user_namespace: str) -> None:
    lease_name = f"{cluster.operator.fullname}-controller"

    def holder() -> str:
        lease = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "lease", lease_name, "-o",
                                           "json"))
        return str(lease["spec"].get("holderIdentity") or "")

    group = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VmGroup",
             "metadata": {"name": "failover", "namespace": user_namespace},
             "spec": {"cpu": 1, "memory": 1, "replicas": 1, "template": "vm-operator-template"}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(group))
    _wait_row(cluster, user_namespace, "failover", "RUNNING", 1)
    leader = holder().split("_")[0]
    (leader_pod,) = [p for p in cluster.pods("controller") if p["metadata"]["name"] == leader]
    metrics = f"http://{leader_pod['status']['podIP']}:8080/metrics"
    before = _clones(metrics)
    cluster.kubectl("-n", user_namespace, "scale", "vg", "failover", "--replicas=6")
    # in the middle of the scale-up: the leader has asked vCenter for the clones, which take
    # CLONE_MS each, and dies before they are done
    poll(lambda: _clones(metrics) > before, timeout=30, what="the leader to start cloning",
         interval=0.05)
    assert len(_owned_vms(cluster, user_namespace, "failover")) < 6
    _assert_no_error_lines(cluster, leader)
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", leader, "--wait=false")
    poll(lambda: (h := holder()) and not h.startswith(leader), timeout=60,
         what="the standby to take the Lease")
    _wait_row(cluster, user_namespace, "failover", "RUNNING", 6)
    assert _owned_vms(cluster, user_namespace, "failover") == [
        f"{user_namespace}-failover-{i}" for i in range(6)]
    cluster.kubectl("-n", NAMESPACE, "rollout", "status",
                    f"deployment/{lease_name}", "--timeout=90s")


# --- availability: no admission fails while the webhook's Pods change ----------------------

class Load:
    """VmGroups (server-side dry run, defaulting and validation) and injected Pods (dry run)
    admitted at a steady rate, every answer checked, in a thread."""

    def __init__(self, cluster: Cluster, namespace: str, rate: float = 10.0) -> None:
        self._custom = client.CustomObjectsApi(cluster.api)
        self._core = client.CoreV1Api(cluster.api)
        self._namespace = namespace
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _one(self, i: int) -> None:
        name = f"load-{i}"
        if i % 2:
            created = self._custom.create_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL,
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VmGroup",
                 "metadata": {"name": name}, "spec": {"template": "vm-operator-template"}},
                dry_run="All", _request_timeout=15)
            if created["spec"].get("replicas") != 1:
                self.failures.append(f"{name}: not defaulted")
        else:
            pod = self._core.create_namespaced_pod(self._namespace, client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, annotations={
                    "initializer.kubernetes.io/logging-agent": "true"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app",
                                                                     image=PAUSE_IMAGE)])),
                dry_run="All", _request_timeout=15)
            if [c.name for c in pod.spec.containers] != ["app", "logging-agent"]:
                self.failures.append(f"{name}: not injected")

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._one(i)
            except ApiException as exc:
                self.failures.append(f"load-{i}: {exc.status} {exc.reason}: {exc.body}")
            except Exception as exc:
                self.failures.append(f"load-{i}: {exc!r}")
            self.sent += 1
            i += 1
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))


def _injection_ready(cluster: Cluster, namespace: str) -> None:
    agent = {"containers": [{"name": "logging-agent", "image": PAUSE_IMAGE}]}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("logging-agent-initializer", agent, namespace=NAMESPACE)))
    with Load(cluster, namespace, rate=5) as probe:
        poll(lambda: probe.sent >= 4 and not probe.failures[-2:] and probe.sent, timeout=30,
             what="injection to work")


def test_no_admission_fails_while_a_webhook_pod_is_deleted(
        cluster: Cluster, user_namespace: str) -> None:
    _injection_ready(cluster, user_namespace)
    with Load(cluster, user_namespace) as load:
        poll(lambda: load.sent >= 20, timeout=30, what="the load to run")
        victim = cluster.pods("webhook")[0]["metadata"]["name"]
        _assert_no_error_lines(cluster, victim)
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", victim, "--timeout=90s")
        cluster.kubectl("-n", NAMESPACE, "rollout", "status",
                        f"deployment/{cluster.operator.fullname}-webhook", "--timeout=90s")
        sent = load.sent
        poll(lambda: load.sent >= sent + 20, timeout=30, what="more load after the change")
    assert load.failures == []
    assert load.sent >= 100


def test_no_admission_fails_during_helm_upgrade_to_a_new_tag(
        cluster: Cluster, user_namespace: str) -> None:
    _injection_ready(cluster, user_namespace)
    repository, _, tag = cluster.image_ref.rpartition(":")
    new_tag = f"{tag}-upgrade"
    assert cluster.stack.node is not None
    cluster.stack.node.ctr("images", "tag", f"docker.io/library/{cluster.image_ref}",
                           f"docker.io/library/{repository}:{new_tag}")
    with Load(cluster, user_namespace) as load:
        poll(lambda: load.sent >= 20, timeout=30, what="the load to run")
        cluster.operator.helm("upgrade", cluster.operator.release,
                              str(Path(__file__).resolve().parents[2] / "charts/vmgroup-operator"),
                              "--namespace", NAMESPACE, "--reuse-values",
                              "--set", f"image.tag={new_tag}", "--wait", "--timeout=180s")
        sent = load.sent
        poll(lambda: load.sent >= sent + 20, timeout=30, what="more load after the upgrade")
    assert load.failures == []
    for component in ("webhook", "controller"):
        images = {p["spec"]["containers"][0]["image"] for p in cluster.pods(component)
                  if not p["metadata"].get("deletionTimestamp")}
        assert images == {f"{repository}:{new_tag}"}


# --- memory and logs, after all of the above -------------------------------------------------

def _working_set(pod: dict[str, Any]) -> int:
    """The container's working set as the kubelet counts it: usage less inactive file pages,
    from the Pod's memory cgroup (v1) on the node."""
    uid = pod["metadata"]["uid"]
    qos = pod["status"]["qosClass"].lower()
    base = Path("/sys/fs/cgroup/memory/kubepods")
    group = base / f"pod{uid}" if qos == "guaranteed" else base / qos / f"pod{uid}"
    usage = int((group / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return usage - int(stat["total_inactive_file"])


def _limit(pod: dict[str, Any]) -> int:
    text = pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30, "M": 10**6, "G": 10**9}
    number, unit = re.fullmatch(r"(\d+)(\D*)", text).groups()
    return int(number) * units.get(unit, 1)


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_memory_stays_under_the_limit_with_headroom(cluster: Cluster, component: str) -> None:
    for pod in cluster.pods(component):
        working_set, limit = _working_set(pod), _limit(pod)
        assert working_set <= 0.7 * limit, (pod["metadata"]["name"], working_set, limit)


def _assert_no_error_lines(cluster: Cluster, pod: str) -> None:
    """The Pod's log has lines, none of them an error (checked before a test deletes a Pod)."""
    logs = cluster.kubectl("-n", NAMESPACE, "logs", pod)
    assert logs.strip(), pod
    errors = [line for line in logs.splitlines()
              if not line.startswith("{") or json.loads(line).get("level") in ("error",
                                                                               "critical")]
    assert errors == [], pod


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_no_error_line_in_the_pods_logs(cluster: Cluster, component: str) -> None:
    for pod in cluster.pods(component):
        _assert_no_error_lines(cluster, pod["metadata"]["name"])


def test_the_stack_is_one_of_a_node(cluster: Cluster) -> None:
    nodes = yaml.safe_load(cluster.kubectl("get", "nodes", "-o", "yaml"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["vmgroup-node"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
