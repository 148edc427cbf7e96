"""vmgroup-operator installed the way users install it: its image on the node, its Helm chart.

`make dev` and the end-to-end tests through real Pods use this; the image is `make image`'s
(hack/image/build.sh), imported into the node's containerd when the stack starts.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .components import REPO, binary
from .process import StackError
from .vsphere import VCenterInfo

CHART = REPO / "charts" / "vmgroup-operator"
IMAGE_BUILD = REPO / "hack" / "image" / "build.sh"
RELEASE = "vgo"
CREDENTIALS_SECRET = "vcenter-credentials"  # noqa: S105 - a Secret's name, not a password


def build_image() -> tuple[Path, str]:
    """`make image` (cached: seconds when nothing changed): the archive and its name:tag."""
    out = subprocess.run([str(IMAGE_BUILD)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise StackError(f"make image failed:\n{out.stderr[-3000:]}")
    archive = Path(out.stdout.strip().splitlines()[-1])
    return archive, (archive.parent / "ref").read_text().strip()


@dataclass(frozen=True)
class Operator:
    """One release of the chart in one namespace of a stack with a node."""

    kubeconfig: Path
    home: Path  # helm's and kubectl's caches and config: never the user's own
    namespace: str = "vmgroup-system"
    release: str = RELEASE

    @property
    def fullname(self) -> str:
        return f"{self.release}-vmgroup-operator"

    def _env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        return {"PATH": f"{Path(binary('kubectl')).parent}:/usr/bin:/bin",
                "HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig),
                "KUBECACHEDIR": str(self.home / "kubecache")}

    def run(self, tool: str, *args: str, stdin: str | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([binary(tool), *args], input=stdin, capture_output=True,
                                text=True, timeout=timeout, env=self._env(), check=False)
        if check and result.returncode != 0:
            raise StackError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def helm(self, *args: str, stdin: str | None = None, timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, stdin=stdin, timeout=timeout, check=check)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, stdin=stdin, timeout=timeout, check=check)

    def values(self, vcenter: VCenterInfo, image_ref: str) -> list[str]:
        """helm flags: the local image (never pulled: there is no registry) and the stack's
        vcsim, verified against the stack's CA."""
        repository, _, tag = image_ref.rpartition(":")
        return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                "--set", "image.pullPolicy=Never",
                "--set", f"controller.vcenter.server={vcenter.host}",
                "--set", f"controller.vcenter.port={vcenter.port}",
                "--set", f"controller.vcenter.datacenter={vcenter.datacenter}",
                "--set-file", f"controller.vcenter.caBundle={vcenter.ca_file}",
                "--set", f"controller.vcenter.credentials.existingSecret={CREDENTIALS_SECRET}"]

    def install(self, vcenter: VCenterInfo, image_ref: str, *extra: str,
                timeout: str = "180s") -> None:
        """The namespace, the vCenter Secret (the password passes through stdin only), then
        `helm upgrade --install --wait`: both Deployments Ready."""
        namespace = self.kubectl("create", "namespace", self.namespace, "--dry-run=client",
                                 "-o", "yaml").stdout
        self.kubectl("apply", "-f", "-", stdin=namespace)
        secret = self.kubectl(
            "-n", self.namespace, "create", "secret", "generic", CREDENTIALS_SECRET,
            f"--from-literal=username={vcenter.username}", "--from-file=password=/dev/stdin",
            "--dry-run=client", "-o", "yaml", stdin=vcenter.password).stdout
        self.kubectl("apply", "-f", "-", stdin=secret)
        self.helm("upgrade", "--install", self.release, str(CHART), "--namespace",
                  self.namespace, "--wait", f"--timeout={timeout}",
                  *self.values(vcenter, image_ref), *extra, timeout=400)

    def uninstall(self) -> None:
        self.helm("uninstall", self.release, "--namespace", self.namespace, "--wait",
                  check=False)
